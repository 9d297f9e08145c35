//! The operator's Prometheus metrics (prefix `inputbot_operator_`): reconciles by kind and
//! result, failures by error label, reconcile durations, reconciles in flight, writes made
//! and writes skipped because nothing changed, and whether this replica leads.

use std::sync::atomic::AtomicI64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `InputBot`, `Pipeline` or `ActionBinding`.
    pub kind: String,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Resource kind.
    pub kind: String,
    /// [`crate::error::Error::label`].
    pub error: String,
}

/// Labels of a write to the API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Kind of the object written (`Deployment`, `status`, …).
    pub object: String,
}

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Family<KindLabels, Counter>,
    /// Reconciles that failed.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile durations in seconds.
    pub duration: Family<KindLabels, Histogram>,
    /// Reconciles running now (the work queue's active part).
    pub in_flight: Family<KindLabels, Gauge>,
    /// Writes sent to the API server.
    pub writes: Family<WriteLabels, Counter>,
    /// Writes skipped because the live object already matched.
    pub writes_skipped: Family<WriteLabels, Counter>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge<i64, AtomicI64>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
            in_flight: Family::default(),
            writes: Family::default(),
            writes_skipped: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("inputbot_operator");
        r.register("reconciles", "Reconciles started", m.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Reconciles that failed, by error",
            m.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile durations",
            m.duration.clone(),
        );
        r.register(
            "reconciles_in_flight",
            "Reconciles running now",
            m.in_flight.clone(),
        );
        r.register(
            "api_writes",
            "Writes sent to the API server",
            m.writes.clone(),
        );
        r.register(
            "api_writes_skipped",
            "Writes skipped because the object already matched",
            m.writes_skipped.clone(),
        );
        r.register("leader", "1 while this replica leads", m.leader.clone());
        m
    }

    /// Counts a write of `object`.
    pub fn wrote(&self, object: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                object: object.into(),
            })
            .inc();
    }

    /// Counts a skipped write of `object`.
    pub fn skipped(&self, object: &str) {
        self.writes_skipped
            .get_or_create(&WriteLabels {
                object: object.into(),
            })
            .inc();
    }
}
