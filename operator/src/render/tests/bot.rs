//! The intake side: a webhook bot's children, config and Secrets, hashes, poll and
//! schedule, disruption budget, Ingress and endpoints.

use super::*;

// --- a webhook bot ---------------------------------------------------------------------------

#[test]
fn a_webhook_bot_renders_a_configmap_a_deployment_and_a_service_in_apply_order() {
    let plan = bot_plan(&webhook_bot());
    assert_eq!(
        kinds_and_names(&plan),
        vec![
            (ChildKind::ConfigMap, "hooks-ingest".to_owned()),
            (ChildKind::Deployment, "hooks-ingest".to_owned()),
            (ChildKind::Service, "hooks-ingest".to_owned()),
        ]
    );
    assert_eq!(plan.deployments, vec!["hooks-ingest".to_owned()]);
    assert_eq!(plan.autoscaling, AutoscalingState::Off);
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    for object in objects(&plan) {
        assert_eq!(object["metadata"]["namespace"], "team-a");
    }
}

#[test]
fn every_child_of_a_resource_with_a_uid_has_a_controller_owner_reference() {
    let plan = bot_plan(&webhook_bot());
    for object in objects(&plan) {
        assert_eq!(
            object["metadata"]["ownerReferences"],
            json!([{
                "apiVersion": "inputbot.dev/v1alpha1",
                "kind": "InputBot",
                "name": "hooks",
                "uid": "6f1c3b2e-0000-4000-8000-000000000001",
                "controller": true,
                "blockOwnerDeletion": true,
            }]),
            "{}",
            object["kind"]
        );
    }
}

#[test]
fn children_of_a_resource_without_a_uid_have_no_owner_reference() {
    let plan = bot_plan(WEBHOOK_AND_POLL_BOT);
    for object in objects(&plan) {
        assert!(
            object["metadata"].get("ownerReferences").is_none(),
            "{object}"
        );
    }
}

#[test]
fn every_child_carries_the_five_app_kubernetes_io_labels_and_the_owner_labels() {
    let plan = bot_plan(&webhook_bot());
    let expected = json!({
        "app.kubernetes.io/name": "inputbot",
        "app.kubernetes.io/instance": "hooks",
        "app.kubernetes.io/component": "ingest",
        "app.kubernetes.io/part-of": "hooks",
        "app.kubernetes.io/managed-by": "inputbot-operator",
        "inputbot.dev/owner-kind": "inputbot",
        "inputbot.dev/owner-name": "hooks",
    });
    for object in objects(&plan) {
        assert_eq!(object["metadata"]["labels"], expected, "{}", object["kind"]);
    }
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"],
        expected
    );
}

#[test]
fn the_deployment_and_service_select_pods_by_the_selector_labels_only() {
    let plan = bot_plan(&webhook_bot());
    let selector = json!({
        "app.kubernetes.io/name": "inputbot",
        "app.kubernetes.io/instance": "hooks",
        "app.kubernetes.io/component": "ingest",
    });
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], selector);
    let service = child(&plan, ChildKind::Service, "hooks-ingest");
    assert_eq!(service["spec"]["selector"], selector);
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http"}])
    );
}

#[test]
fn the_ingest_deployment_rolls_out_without_taking_a_pod_away() {
    let plan = bot_plan(&webhook_bot());
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
    );
}

#[test]
fn the_pod_template_carries_the_digest_of_the_configmaps_config() {
    let plan = bot_plan(&webhook_bot());
    let configmap = child(&plan, ChildKind::ConfigMap, "hooks-ingest");
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    let hash = config_hash(&deployment);
    assert_eq!(hash, digest(&config_of(&configmap)));
    assert_eq!(hash.len(), 24, "12 bytes, hex: {hash}");
}

#[test]
fn the_runtime_runs_with_a_restricted_security_context() {
    let plan = bot_plan(&webhook_bot());
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    let security = &container(&deployment)["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["privileged"], false);
    assert_eq!(security["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(
        security["seccompProfile"],
        json!({"type": "RuntimeDefault"})
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"],
        json!({"type": "RuntimeDefault"})
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
}

#[test]
fn the_runtime_is_probed_on_healthz_and_readyz_and_runs_its_role_on_the_mounted_config() {
    let plan = bot_plan(&webhook_bot());
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    let c = container(&deployment);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["image"], Settings::defaults().runtime_image);

    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(3)
            .any(|w| w == ["ingest", "--config", "/etc/inputbot/component.json"]),
        "{args:?}"
    );

    let mounts = c["volumeMounts"].as_array().unwrap();
    let config_mount = mounts.iter().find(|m| m["name"] == "config").unwrap();
    assert_eq!(config_mount["mountPath"], "/etc/inputbot");
    assert_eq!(config_mount["readOnly"], true);
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let config_volume = volumes.iter().find(|v| v["name"] == "config").unwrap();
    assert_eq!(config_volume["configMap"]["name"], "hooks-ingest");
}

// --- config and Secrets ----------------------------------------------------------------------

#[test]
fn the_configmap_holds_the_resolved_config_as_json() {
    let set = load(&webhook_bot());
    let plan = plan_bot(&set.bots[0], &Settings::defaults(), NO_KEDA).unwrap();
    let configmap = child(&plan, ChildKind::ConfigMap, "hooks-ingest");
    let expected =
        serde_json::to_value(ComponentConfig::Ingest(resolve::resolve_bot(&set.bots[0]))).unwrap();
    assert_eq!(config_of(&configmap), expected);
    assert_eq!(config_of(&configmap)["role"], "ingest");
    assert_eq!(
        configmap["data"].as_object().unwrap().len(),
        1,
        "only component.json"
    );
}

#[test]
fn no_secret_value_appears_in_any_rendered_object() {
    let set = load(&webhook_bot());
    assert!(
        set.has_secret("team-a", "gh"),
        "the fixture holds the Secret"
    );
    let rendered = render_files(&set, &Settings::defaults(), NO_KEDA).unwrap();
    assert!(!rendered.is_empty());
    let plan = plan_bot(&set.bots[0], &Settings::defaults(), NO_KEDA).unwrap();
    let texts = rendered
        .iter()
        .chain(objects(&plan).iter())
        .map(|o| serde_json::to_string(o).unwrap())
        .collect::<Vec<_>>();
    for text in texts {
        assert!(
            !text.contains(SECRET_VALUE),
            "a Secret value leaked: {text}"
        );
        assert!(!text.contains("an-older-key-still-accepted"), "{text}");
    }
}

#[test]
fn a_referenced_secret_is_mounted_read_only_with_only_the_referenced_keys() {
    let plan = bot_plan(&webhook_bot());
    let deployment = child(&plan, ChildKind::Deployment, "hooks-ingest");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let secrets: Vec<&Value> = volumes
        .iter()
        .filter(|v| v.get("secret").is_some())
        .collect();
    assert_eq!(secrets.len(), 1, "{volumes:?}");
    let secret = &secrets[0]["secret"];
    assert_eq!(secret["secretName"], "gh");
    assert_eq!(
        secret["items"],
        json!([
            {"key": "previous-secret", "path": "previous-secret"},
            {"key": "webhook-secret", "path": "webhook-secret"},
        ]),
        "the unrelated key is not mounted"
    );
    assert_eq!(secret["optional"], false);
    let mount = container(&deployment)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == secrets[0]["name"])
        .cloned()
        .unwrap();
    assert_eq!(mount["mountPath"], "/var/run/inputbot/secrets/gh");
    assert_eq!(mount["readOnly"], true);
}

// --- hashes and determinism ------------------------------------------------------------------

#[test]
fn changing_a_pipeline_step_changes_the_config_hash() {
    let before = pipeline_plan(&pipeline("", "", "{a: .x}"), NO_KEDA);
    let after = pipeline_plan(&pipeline("", "", "{a: .y}"), NO_KEDA);
    let hash = |p: &Plan| config_hash(&child(p, ChildKind::Deployment, "triage-process"));
    assert_ne!(hash(&before), hash(&after));
    let again = pipeline_plan(&pipeline("", "", "{a: .x}"), NO_KEDA);
    assert_eq!(hash(&before), hash(&again));
}

#[test]
fn an_unchanged_spec_renders_byte_identical_output() {
    let yaml = format!(
        "{}---\n{}",
        webhook_bot(),
        std::fs::read_to_string(examples_dir().join("support-to-crm.yaml")).unwrap()
    );
    let render = || {
        let rendered = render_files(&load(&yaml), &Settings::defaults(), KEDA).unwrap();
        serde_json::to_string(&rendered).unwrap()
    };
    let first = render();
    assert_eq!(first, render());
    assert_eq!(first, render());
}

// --- poll and schedule -----------------------------------------------------------------------

#[test]
fn poll_and_schedule_sources_run_in_a_single_replica_poller_deployment_that_recreates() {
    let plan = bot_plan(POLL_BOT);
    assert_eq!(
        kinds_and_names(&plan),
        vec![
            (ChildKind::ConfigMap, "timed-poller".to_owned()),
            (ChildKind::Deployment, "timed-poller".to_owned()),
        ],
        "no Service: nothing is pushed to a poller"
    );
    assert_eq!(plan.deployments, vec!["timed-poller".to_owned()]);
    assert!(plan.endpoints.is_empty());
    let deployment = child(&plan, ChildKind::Deployment, "timed-poller");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"], json!({"type": "Recreate"}));
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "poller"
    );
    let config = config_of(&child(&plan, ChildKind::ConfigMap, "timed-poller"));
    assert_eq!(source_names(&config), ["incidents", "nightly"]);
    let args = &container(&deployment)["args"];
    assert!(
        args.as_array().unwrap().contains(&json!("ingest")),
        "{args}"
    );
}

#[test]
fn a_bot_with_webhook_and_poll_sources_gets_both_an_ingest_and_a_poller_deployment() {
    let plan = bot_plan(WEBHOOK_AND_POLL_BOT);
    assert_eq!(
        kinds_and_names(&plan),
        vec![
            (ChildKind::ConfigMap, "mixed-ingest".to_owned()),
            (ChildKind::ConfigMap, "mixed-poller".to_owned()),
            (ChildKind::Deployment, "mixed-ingest".to_owned()),
            (ChildKind::Deployment, "mixed-poller".to_owned()),
            (ChildKind::Service, "mixed-ingest".to_owned()),
        ]
    );
    assert_eq!(
        plan.deployments,
        vec!["mixed-ingest".to_owned(), "mixed-poller".to_owned()]
    );
    let ingest = config_of(&child(&plan, ChildKind::ConfigMap, "mixed-ingest"));
    let poller = config_of(&child(&plan, ChildKind::ConfigMap, "mixed-poller"));
    assert_eq!(source_names(&ingest), ["hook"]);
    assert_eq!(source_names(&poller), ["incidents"]);
    let ingest = child(&plan, ChildKind::Deployment, "mixed-ingest");
    let poller = child(&plan, ChildKind::Deployment, "mixed-poller");
    assert_eq!(ingest["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(poller["spec"]["strategy"]["type"], "Recreate");
    assert_ne!(config_hash(&ingest), config_hash(&poller));
}

// --- disruption budget, Ingress, endpoints ---------------------------------------------------

#[test]
fn more_than_one_ingest_replica_adds_a_pod_disruption_budget() {
    let one = bot_plan(&open_bot("    replicas: 1"));
    assert_eq!(count(&one, ChildKind::PodDisruptionBudget), 0);

    let two = bot_plan(&open_bot("    replicas: 2"));
    let pdb = child(&two, ChildKind::PodDisruptionBudget, "hooks-ingest");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        child(&two, ChildKind::Deployment, "hooks-ingest")["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        child(&two, ChildKind::Deployment, "hooks-ingest")["spec"]["replicas"],
        2
    );

    let autoscaled = bot_plan(&open_bot(
        "    autoscaling: {minReplicas: 2, maxReplicas: 4}",
    ));
    assert_eq!(count(&autoscaled, ChildKind::PodDisruptionBudget), 1);
}

#[test]
fn expose_adds_an_ingress_with_an_exact_path_per_webhook_and_tls() {
    let plan = bot_plan(&open_bot(
        r#"    expose:
      host: hooks.example.com
      ingressClassName: nginx
      tls: {secretName: hooks-tls}
      annotations: {cert-manager.io/cluster-issuer: letsencrypt}"#,
    ));
    assert_eq!(
        plan.children.iter().map(Child::kind).collect::<Vec<_>>(),
        [
            ChildKind::ConfigMap,
            ChildKind::Deployment,
            ChildKind::Service,
            ChildKind::Ingress
        ]
    );
    let ingress = child(&plan, ChildKind::Ingress, "hooks-ingest");
    assert_eq!(ingress["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(
        ingress["metadata"]["annotations"],
        json!({"cert-manager.io/cluster-issuer": "letsencrypt"})
    );
    let spec = &ingress["spec"];
    assert_eq!(spec["ingressClassName"], "nginx");
    assert_eq!(
        spec["tls"],
        json!([{"hosts": ["hooks.example.com"], "secretName": "hooks-tls"}])
    );
    assert_eq!(spec["rules"][0]["host"], "hooks.example.com");
    let backend = json!({"service": {"name": "hooks-ingest", "port": {"name": "http"}}});
    assert_eq!(
        spec["rules"][0]["http"]["paths"],
        json!([
            {"path": "/github", "pathType": "Exact", "backend": backend},
            {"path": "/stripe", "pathType": "Exact", "backend": backend},
        ])
    );
}

#[test]
fn endpoints_are_the_service_url_or_the_exposed_url() {
    let internal = bot_plan(&open_bot("    replicas: 1"));
    assert_eq!(
        internal.endpoints,
        vec![
            (
                "github".to_owned(),
                "http://hooks-ingest.default.svc:8080/github".to_owned()
            ),
            (
                "stripe".to_owned(),
                "http://hooks-ingest.default.svc:8080/stripe".to_owned()
            ),
        ]
    );
    assert_eq!(count(&internal, ChildKind::Ingress), 0);

    let tls = bot_plan(&open_bot(
        "    expose: {host: hooks.example.com, tls: {secretName: hooks-tls}}",
    ));
    assert_eq!(
        tls.endpoints[0],
        (
            "github".to_owned(),
            "https://hooks.example.com/github".to_owned()
        )
    );
    let plain = bot_plan(&open_bot("    expose: {host: hooks.example.com}"));
    assert_eq!(
        plain.endpoints[1],
        (
            "stripe".to_owned(),
            "http://hooks.example.com/stripe".to_owned()
        )
    );
    assert!(
        child(&plain, ChildKind::Ingress, "hooks-ingest")["spec"]
            .get("tls")
            .is_none()
    );
}
