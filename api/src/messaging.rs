//! The notification actions that reach people: `teams` (an Adaptive Card posted to a Microsoft
//! Teams incoming webhook or Workflows URL) and `sms` (a text message through Twilio's
//! Messages API).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, SecretKeyRef};

/// Twilio's API when `sms.apiUrl` is not set.
pub const DEFAULT_TWILIO_API_URL: &str = "https://api.twilio.com";
/// The pattern of an E.164 phone number: `+`, then up to 15 digits.
pub const E164_PATTERN: &str = r"^\+[1-9][0-9]{1,14}$";

/// A Microsoft Teams message: an Adaptive Card with a title, a text and facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeamsAction {
    /// The incoming-webhook or Workflows ("When a Teams webhook request is received") URL. It
    /// is a credential, so it lives in a Secret.
    pub webhook_secret_ref: SecretKeyRef,
    /// Title of the card (large, bold), with `{{ }}` CEL expressions over `data`, `event` and
    /// `labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub title: Option<String>,
    /// Text of the card with `{{ }}` CEL expressions; Teams renders a subset of Markdown.
    #[schemars(length(min = 1, max = 20000))]
    pub text: String,
    /// Name–value pairs shown as a FactSet under the text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub facts: Vec<TeamsFact>,
    /// Timeout of one attempt. Defaults to 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// One fact of a Teams card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TeamsFact {
    /// The fact's name, with `{{ }}` CEL expressions, e.g. `Priority`.
    #[schemars(length(min = 1, max = 1000))]
    pub title: String,
    /// The fact's value, with `{{ }}` CEL expressions, e.g. `{{ data.priority }}`.
    #[schemars(length(min = 1, max = 4000))]
    pub value: String,
}

/// A text message sent with Twilio's Messages API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmsAction {
    /// The Twilio Account SID (`AC…`), from a Secret: the user name of the API's basic auth
    /// and part of the request path.
    pub account_sid_secret_ref: SecretKeyRef,
    /// The Twilio auth token, from a Secret: the password of the API's basic auth.
    pub auth_token_secret_ref: SecretKeyRef,
    /// The sending number in E.164 form, e.g. `+15005550006`, or an alphanumeric sender ID
    /// where the destination country allows one.
    #[schemars(length(min = 2, max = 16))]
    pub from: String,
    /// The recipient in E.164 form, with `{{ }}` CEL expressions, e.g. `{{ data.phone }}` or
    /// `+4915112345678`.
    #[schemars(length(min = 1, max = 1024))]
    pub to: String,
    /// Message text with `{{ }}` CEL expressions. Twilio accepts up to 1600 characters; a
    /// longer text is cut there.
    #[schemars(length(min = 1, max = 4096))]
    pub body: String,
    /// Base URL of the API. Defaults to `https://api.twilio.com`; set it for a regional edge
    /// or a test server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub api_url: Option<String>,
    /// Timeout of one attempt. Defaults to 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}
