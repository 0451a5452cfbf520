//! The error type at hostchan's boundary: one line for a person or an engine, and an exit code.

use std::fmt;

/// Exit code for bad usage or a bad spec: the caller must change what it asked for.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a failure while doing what was asked.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One field of the request is wrong; the message names the field and the value.
    #[error("invalid {field} {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: Quoted,
        reason: String,
    },
    /// The request as a whole cannot be carried out as given (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration file is wrong; the message names the file, line and key (exit 2).
    #[error("{0}")]
    Config(String),
    /// The owner unit a channel should be bound to is missing or not running.
    #[error("{0}")]
    Owner(String),
    /// The path is already a channel, or is being made into one right now.
    #[error("{0}")]
    AlreadyExists(String),
    /// No channel matches what was named.
    #[error("{0}")]
    NotFound(String),
    /// systemd refused or failed the request.
    #[error("{0}")]
    Systemd(String),
    /// A file-system or other runtime failure, with its context.
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    pub fn invalid(field: &'static str, value: impl AsRef<str>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            value: Quoted(value.as_ref().to_owned()),
            reason: reason.into(),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid { .. } | Error::Usage(_) | Error::Config(_) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }

    pub fn io(context: impl fmt::Display, err: impl fmt::Display) -> Self {
        Error::Runtime(format!("{context}: {err}"))
    }
}

/// A value shown inside an error message: quoted, with control characters made visible so that
/// the message stays on one line whatever the caller sent.
#[derive(Debug)]
pub struct Quoted(pub String);

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_field_and_value_on_one_line() {
        let err = Error::invalid("size", "1\n2", "not a number");
        assert_eq!(err.to_string(), r#"invalid size "1\n2": not a number"#);
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert_eq!(Error::NotFound("x".into()).exit_code(), EXIT_FAILURE);
    }
}
