//! `edgeshare-agent register`: the one-time set-up of contract 2, this device as a producer
//! with the streaming platform's auth service (`POST /register {username, password,
//! role: "producer", device_id}`), from `[stream]` and `[device]`.
//!
//! Safe to run again (an install script may): an account that exists already is verified by
//! logging in with the configured password, and that counts as done.

use std::fmt;
use std::path::Path;

use anyhow::Context as _;
use edgeshare_shared::backend::depin::DepinAuth;
use edgeshare_shared::backend::{BackendError, Rejection};
use edgeshare_shared::config::{ConfigError, Origin, Problem};

use crate::config::{AgentConfig, StreamConfig};

/// What `register` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The account was created.
    Registered { user_id: String },
    /// The account existed, and the configured password logs in to it.
    AlreadyRegistered { user_id: String },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Registered { user_id } => write!(f, "registered (user id {user_id})"),
            Outcome::AlreadyRegistered { user_id } => write!(
                f,
                "already registered (user id {user_id}); the configured password logs in"
            ),
        }
    }
}

/// The `[stream]` section `register` needs, or a configuration error naming it.
pub fn stream_section<'a>(
    config: &'a AgentConfig,
    file: &Path,
) -> Result<&'a StreamConfig, ConfigError> {
    config.stream.as_ref().ok_or_else(|| ConfigError::Invalid {
        source_name: file.display().to_string(),
        problems: vec![Problem {
            key: "stream".to_owned(),
            origin: Origin::Nowhere,
            message: "is required by `register` (auth_url, ws_url, username, password)".to_owned(),
        }],
    })
}

/// True if the auth service refused the registration because the username is taken. The
/// stand-in answers 409 as an Express service does for a taken name; the platform's own
/// documents do not say, so a 400 that says the name exists is taken as the same.
fn already_exists(err: &BackendError) -> bool {
    match err {
        BackendError::Rejected {
            kind: Rejection::Conflict,
            ..
        } => true,
        BackendError::Rejected {
            kind: Rejection::BadRequest,
            message,
            ..
        } => message.to_ascii_lowercase().contains("exist"),
        _ => false,
    }
}

/// Registers `username` (the one `auth` logs in with) as a producer for `device_id`.
pub async fn register(
    auth: &DepinAuth,
    username: &str,
    device_id: &str,
) -> anyhow::Result<Outcome> {
    match auth.register(device_id).await {
        Ok(registered) => Ok(Outcome::Registered {
            user_id: registered.user_id,
        }),
        Err(err) if already_exists(&err) => match auth.login().await {
            Ok(tokens) => Ok(Outcome::AlreadyRegistered {
                user_id: tokens.user_id,
            }),
            Err(login) if login.rejection() == Some(Rejection::BadCredentials) => {
                Err(anyhow::Error::new(login).context(format!(
                    "{username} is registered already, but the configured password is refused: set stream.password to that account's password, or choose another stream.username"
                )))
            }
            Err(login) => Err(anyhow::Error::new(login).context(format!(
                "{username} is registered already, and logging in to verify the password failed; try again"
            ))),
        },
        Err(err) => Err(anyhow::Error::new(err))
            .with_context(|| format!("registering {username} as the producer of {device_id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, message: &str, kind: Rejection) -> BackendError {
        BackendError::Rejected {
            endpoint: "POST /register".into(),
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            message: message.into(),
            kind,
        }
    }

    #[test]
    fn a_taken_name_is_told_apart_from_other_refusals() {
        assert!(already_exists(&refused(
            409,
            "Username already exists",
            Rejection::Conflict
        )));
        assert!(already_exists(&refused(
            400,
            "User already exists",
            Rejection::BadRequest
        )));
        assert!(!already_exists(&refused(
            400,
            "device_id required for a producer",
            Rejection::BadRequest
        )));
        assert!(!already_exists(&refused(
            500,
            "exists",
            Rejection::ServerError
        )));
    }

    #[test]
    fn no_stream_section_is_a_config_error_naming_it() {
        let config: AgentConfig = edgeshare_shared::config::parse(
            "[device]\nid = \"d\"\n[telemetry]\nurl = \"http://t\"\nemail = \"e\"\npassword = \"p\"\ntenant = \"t\"\n",
            "agent.toml",
            &[],
        )
        .unwrap();
        let err = stream_section(&config, Path::new("agent.toml")).unwrap_err();
        assert!(
            err.to_string()
                .contains("stream: is required by `register`"),
            "{err}"
        );
    }
}
