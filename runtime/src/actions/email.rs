//! The email action: one message per attempt over SMTP (STARTTLS, TLS or plain), to every
//! recipient. A transient SMTP reply (4xx) is retried like a connection failure; a permanent
//! one (5xx) is dead-lettered at once (see the table in [`super`]).

use std::{fmt, time::Duration};

use futures::future::BoxFuture;
use inputbot_api::{
    binding::{EmailAction, SmtpTls},
    config::FailureClass,
    expr::{Scope, Template},
};
use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::{
        authentication::Credentials,
        client::{Tls, TlsParameters},
    },
};

use super::{ActionImpl, BuildError, DEFAULT_SMTP_TIMEOUT, other, timeout_of};
use crate::{
    delivery::AttemptError,
    event::Event,
    outbound::{human, one_line},
    secrets::{FieldError, Secrets},
};

pub(super) struct EmailImpl {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `host:port`, for messages.
    server: String,
    tls: SmtpTls,
    username: Option<String>,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject: Template,
    body: Template,
    timeout: Duration,
}

impl fmt::Debug for EmailImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No transport: it holds the password.
        let to: Vec<String> = self.to.iter().map(ToString::to_string).collect();
        f.debug_struct("EmailAction")
            .field("server", &self.server)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("from", &self.from.to_string())
            .field("to", &to)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl EmailImpl {
    pub(super) fn build(spec: &EmailAction, secrets: &Secrets) -> Result<Self, BuildError> {
        let smtp = &spec.smtp;
        let tls = smtp.tls.unwrap_or_default();
        let port = smtp.port.unwrap_or(match tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        });
        let timeout = timeout_of(
            smtp.timeout.as_ref(),
            "email.smtp.timeout",
            DEFAULT_SMTP_TIMEOUT,
        )?;
        let tls_parameters = || {
            TlsParameters::new(smtp.host.clone()).map_err(|e| {
                BuildError::invalid("email.smtp.tls", format!("cannot set up TLS: {e}"))
            })
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(port)
            .timeout(Some(timeout));
        builder = match tls {
            // STARTTLS is required: no credentials or mail go out over plain text.
            SmtpTls::Starttls => builder.tls(Tls::Required(tls_parameters()?)),
            SmtpTls::Implicit => builder.tls(Tls::Wrapper(tls_parameters()?)),
            SmtpTls::None => builder.tls(Tls::None),
        };
        match (&smtp.username, &smtp.password_secret_ref) {
            (Some(username), Some(secret)) => {
                let password = secrets
                    .get_string(secret)
                    .map_err(|error| FieldError::Secret {
                        field: "email.smtp.passwordSecretRef".to_owned(),
                        error,
                    })?;
                builder = builder.credentials(Credentials::new(username.clone(), password));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(BuildError::invalid(
                    "email.smtp.passwordSecretRef",
                    "required when username is set",
                ));
            }
            (None, Some(_)) => {
                return Err(BuildError::invalid(
                    "email.smtp.username",
                    "required when passwordSecretRef is set",
                ));
            }
        }
        let mailbox = |field: String, text: &str| {
            text.parse::<Mailbox>().map_err(|e| {
                BuildError::invalid(field, format!("{text:?} is not an email address: {e}"))
            })
        };
        if spec.to.is_empty() {
            return Err(BuildError::invalid(
                "email.to",
                "needs at least one recipient",
            ));
        }
        let to = spec
            .to
            .iter()
            .enumerate()
            .map(|(i, to)| mailbox(format!("email.to[{i}]"), to))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            transport: builder.build(),
            server: format!("{}:{port}", smtp.host),
            tls,
            username: smtp.username.clone(),
            from: mailbox("email.from".to_owned(), &spec.from)?,
            to,
            subject: Template::compile(&spec.subject, Scope::Event)
                .map_err(|e| BuildError::invalid("email.subject", e))?,
            body: Template::compile(&spec.body, Scope::Event)
                .map_err(|e| BuildError::invalid("email.body", e))?,
            timeout,
        })
    }

    fn message(&self, event: &Event) -> Result<Message, AttemptError> {
        let vars = event.activation();
        let subject = self
            .subject
            .render(&vars)
            .map_err(|e| other(format!("email.subject: {e}")))?;
        let body = self
            .body
            .render(&vars)
            .map_err(|e| other(format!("email.body: {e}")))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .body(body)
            .map_err(|e| other(format!("email: cannot build the message: {e}")))
    }

    /// Classifies an SMTP failure (see the module documentation for why SMTP replies are not
    /// HTTP statuses).
    fn classify(&self, e: &lettre::transport::smtp::Error) -> AttemptError {
        let server = &self.server;
        if let Some(code) = e.status() {
            let code = u16::from(code);
            let reply = std::error::Error::source(e)
                .map(|s| format!(": {}", one_line(&s.to_string())))
                .unwrap_or_default();
            return if e.is_transient() {
                AttemptError::new(
                    FailureClass::Connection,
                    format!(
                        "email: SMTP {code} from {server} (transient reply, retried like a connection failure){reply}"
                    ),
                )
            } else {
                AttemptError::new(
                    FailureClass::Other,
                    format!(
                        "email: SMTP {code} from {server} (permanent reply, not retried){reply}"
                    ),
                )
            };
        }
        if e.is_timeout() {
            return AttemptError::new(
                FailureClass::Timeout,
                format!(
                    "email: no answer from SMTP server {server} within {}",
                    human(self.timeout)
                ),
            );
        }
        if e.is_client() {
            // The client cannot go on with this server (e.g. no common authentication
            // mechanism): a configuration problem that retries do not fix.
            return AttemptError::new(
                FailureClass::Other,
                format!(
                    "email: cannot send through SMTP server {server}: {}",
                    one_line(&e.to_string())
                ),
            );
        }
        AttemptError::new(
            FailureClass::Connection,
            format!(
                "email: cannot reach SMTP server {server}: {}",
                one_line(&e.to_string())
            ),
        )
    }
}

impl ActionImpl for EmailImpl {
    fn kind(&self) -> &'static str {
        "email"
    }

    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        _attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let message = self.message(event)?;
            match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
                Err(_) => Err(AttemptError::new(
                    FailureClass::Timeout,
                    format!(
                        "email: no answer from SMTP server {} within {}",
                        self.server,
                        human(self.timeout)
                    ),
                )),
                Ok(Err(e)) => Err(self.classify(&e)),
                Ok(Ok(_)) => Ok(()),
            }
        })
    }
}
