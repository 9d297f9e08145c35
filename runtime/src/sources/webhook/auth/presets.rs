//! The HMAC presets as a table: for each sender, where its signature, timestamp and delivery id
//! live, how the signature is encoded and how the signed content is built. A field the spec
//! sets explicitly (`header`, `timestampHeader`, …) overrides the preset's, where the preset
//! allows it.

use inputbot_api::bot::{HmacAlgorithm, HmacPreset, SignatureEncoding};

/// Where the signature, timestamp and id live and how the signed content is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// One signature in `header` (after `prefix`), over the body or `{ts}.{body}`.
    Simple,
    /// `t=<ts>,v1=<hex>[,v1=…]` in one header, over `{t}.{body}`.
    Stripe,
    /// `v0=<hex>` over `v0:{ts}:{body}`.
    Slack,
    /// `v1,<base64> …` over `{id}.{ts}.{body}`.
    StandardWebhooks,
}

/// What a preset fixes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Preset {
    /// The preset's name, as in the spec.
    pub(super) name: &'static str,
    /// Where the parts live and how the signed content is built.
    pub(super) layout: Layout,
    /// The header carrying the signature; `None`: the spec must name it.
    pub(super) header: Option<&'static str>,
    /// The MAC's hash.
    pub(super) algorithm: HmacAlgorithm,
    /// How the signature is written.
    pub(super) encoding: SignatureEncoding,
    /// What precedes the signature in its header, matched case-insensitively.
    pub(super) prefix: &'static str,
    /// The header carrying the signed timestamp, if the sender signs one in a header.
    pub(super) timestamp_header: Option<&'static str>,
    /// The header carrying the sender's delivery id (the replay key), if it sends one.
    pub(super) delivery_id_header: Option<&'static str>,
}

const GITHUB: Preset = Preset {
    name: "github",
    layout: Layout::Simple,
    header: Some("x-hub-signature-256"),
    algorithm: HmacAlgorithm::Sha256,
    encoding: SignatureEncoding::Hex,
    prefix: "sha256=",
    timestamp_header: None,
    delivery_id_header: Some("x-github-delivery"),
};

const STRIPE: Preset = Preset {
    name: "stripe",
    layout: Layout::Stripe,
    header: Some("stripe-signature"),
    algorithm: HmacAlgorithm::Sha256,
    encoding: SignatureEncoding::Hex,
    prefix: "",
    timestamp_header: None,
    delivery_id_header: None,
};

const SLACK: Preset = Preset {
    name: "slack",
    layout: Layout::Slack,
    header: Some("x-slack-signature"),
    algorithm: HmacAlgorithm::Sha256,
    encoding: SignatureEncoding::Hex,
    prefix: "v0=",
    timestamp_header: Some("x-slack-request-timestamp"),
    delivery_id_header: None,
};

const SHOPIFY: Preset = Preset {
    name: "shopify",
    layout: Layout::Simple,
    header: Some("x-shopify-hmac-sha256"),
    algorithm: HmacAlgorithm::Sha256,
    encoding: SignatureEncoding::Base64,
    prefix: "",
    timestamp_header: None,
    delivery_id_header: Some("x-shopify-webhook-id"),
};

const STANDARD_WEBHOOKS: Preset = Preset {
    name: "standard-webhooks",
    layout: Layout::StandardWebhooks,
    header: Some("webhook-signature"),
    algorithm: HmacAlgorithm::Sha256,
    encoding: SignatureEncoding::Base64,
    prefix: "",
    timestamp_header: Some("webhook-timestamp"),
    delivery_id_header: Some("webhook-id"),
};

const GENERIC: Preset = Preset {
    name: "generic",
    layout: Layout::Simple,
    header: None,
    algorithm: HmacAlgorithm::Sha256,
    encoding: SignatureEncoding::Hex,
    prefix: "",
    timestamp_header: None,
    delivery_id_header: None,
};

/// The table row of a preset.
pub(super) fn preset(preset: HmacPreset) -> &'static Preset {
    match preset {
        HmacPreset::Github => &GITHUB,
        HmacPreset::Stripe => &STRIPE,
        HmacPreset::Slack => &SLACK,
        HmacPreset::Shopify => &SHOPIFY,
        HmacPreset::StandardWebhooks => &STANDARD_WEBHOOKS,
        HmacPreset::Generic => &GENERIC,
    }
}
