//! The `teams` and `sms` actions: their Secrets, templates, phone numbers, the API URL and
//! timeouts.

use super::Checker;
use crate::{
    expr::Scope,
    messaging::{SmsAction, TeamsAction},
};

impl Checker<'_> {
    pub(super) fn teams(&mut self, f: &str, t: &TeamsAction) {
        self.secret(&format!("{f}.webhookSecretRef"), &t.webhook_secret_ref);
        if let Some(title) = &t.title {
            self.template(&format!("{f}.title"), title, Scope::Event);
        }
        self.template(&format!("{f}.text"), &t.text, Scope::Event);
        for (i, fact) in t.facts.iter().enumerate() {
            self.template(&format!("{f}.facts[{i}].title"), &fact.title, Scope::Event);
            self.template(&format!("{f}.facts[{i}].value"), &fact.value, Scope::Event);
        }
        self.positive_duration(&format!("{f}.timeout"), t.timeout.as_ref());
    }

    pub(super) fn sms(&mut self, f: &str, s: &SmsAction) {
        self.secret(
            &format!("{f}.accountSidSecretRef"),
            &s.account_sid_secret_ref,
        );
        self.secret(&format!("{f}.authTokenSecretRef"), &s.auth_token_secret_ref);
        self.check(&format!("{f}.from"), check_sender(&s.from));
        if s.to.contains("{{") {
            self.template(&format!("{f}.to"), &s.to, Scope::Event);
        } else {
            self.check(&format!("{f}.to"), check_e164(&s.to));
        }
        self.template(&format!("{f}.body"), &s.body, Scope::Event);
        if let Some(url) = &s.api_url {
            self.url(&format!("{f}.apiUrl"), url, false);
        }
        self.positive_duration(&format!("{f}.timeout"), s.timeout.as_ref());
    }
}

/// A phone number in E.164 form: `+`, a non-zero digit, up to 15 digits in all.
pub fn check_e164(s: &str) -> Result<(), String> {
    let digits = s.strip_prefix('+').unwrap_or("");
    if (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
    {
        Ok(())
    } else {
        Err(format!(
            "expected a phone number in E.164 form such as +15005550006, found {s:?}"
        ))
    }
}

/// An E.164 number, or an alphanumeric sender ID (1–11 letters, digits and spaces, at least
/// one letter).
fn check_sender(s: &str) -> Result<(), String> {
    if s.starts_with('+') {
        return check_e164(s);
    }
    let alphanumeric = (1..=11).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && s.bytes().any(|b| b.is_ascii_alphabetic());
    if alphanumeric {
        Ok(())
    } else {
        Err(format!(
            "expected a phone number in E.164 form such as +15005550006, or an alphanumeric sender ID of at most 11 letters, digits and spaces, found {s:?}"
        ))
    }
}
