//! The error type at hostchan's boundary: a kind (which decides the exit code), a message, what
//! was being done when it happened (context, outermost first) and the cause. It prints as one
//! line for a person or an engine, control characters escaped, whatever the input held.

use std::fmt;

use serde::Serialize;

/// Exit code for bad usage or a bad spec: the caller must change what it asked for.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a failure while doing what was asked.
pub const EXIT_FAILURE: i32 = 1;

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// One field of the request is wrong; the message names the field and the value.
    Invalid,
    /// The request as a whole cannot be carried out as given.
    Usage,
    /// The configuration file is wrong; the message names the file, line and key.
    Config,
    /// The owner unit a channel should be bound to is missing, not running or not a container's.
    Owner,
    /// The path is already a channel, or is being made into one right now.
    AlreadyExists,
    /// No channel matches what was named.
    NotFound,
    /// systemd refused or failed the request.
    Systemd,
    /// A file-system or other runtime failure.
    Runtime,
}

impl Kind {
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Invalid | Kind::Usage | Kind::Config => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

#[derive(Debug)]
pub struct Error {
    kind: Kind,
    /// What was being done, outermost first.
    context: Vec<String>,
    message: String,
    /// For [`Kind::Invalid`]: the reason alone, without the field and value.
    reason: Option<String>,
    source: Option<Cause>,
    /// What came of the attempt to undo what was done, said after the error itself.
    aftermath: Option<Box<str>>,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            context: Vec::new(),
            message: message.into(),
            reason: None,
            source: None,
            aftermath: None,
        }
    }

    /// `invalid <field> "<value>": <reason>`, the value cut as [`quote`] cuts it.
    pub fn invalid(field: &'static str, value: impl AsRef<str>, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Error {
            reason: Some(reason.clone()),
            ..Error::new(
                Kind::Invalid,
                format!("invalid {field} {}: {reason}", quote(value.as_ref())),
            )
        }
    }

    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(Kind::Usage, message)
    }

    pub fn config(message: impl Into<String>) -> Error {
        Error::new(Kind::Config, message)
    }

    pub fn owner(message: impl Into<String>) -> Error {
        Error::new(Kind::Owner, message)
    }

    pub fn already_exists(message: impl Into<String>) -> Error {
        Error::new(Kind::AlreadyExists, message)
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(Kind::NotFound, message)
    }

    pub fn systemd(message: impl Into<String>) -> Error {
        Error::new(Kind::Systemd, message)
    }

    pub fn runtime(message: impl Into<String>) -> Error {
        Error::new(Kind::Runtime, message)
    }

    /// A runtime failure: what was being done, and the cause.
    pub fn io(context: impl fmt::Display, cause: impl Into<Cause>) -> Self {
        Error::new(Kind::Runtime, context.to_string()).caused_by(cause)
    }

    pub fn caused_by(mut self, cause: impl Into<Cause>) -> Error {
        self.source = Some(cause.into());
        self
    }

    /// Says what was being done when this happened; the kind stays.
    pub fn context(mut self, context: impl Into<String>) -> Error {
        self.context.insert(0, context.into());
        self
    }

    /// Says, after the error, what came of undoing what was done before it failed.
    pub fn with_aftermath(mut self, aftermath: impl Into<String>) -> Error {
        self.aftermath = Some(aftermath.into().into_boxed_str());
        self
    }

    pub fn with_kind(mut self, kind: Kind) -> Error {
        self.kind = kind;
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn exit_code(&self) -> i32 {
        self.kind.exit_code()
    }

    /// For [`Kind::Invalid`], the reason without the field and value; otherwise the message.
    pub fn reason(&self) -> String {
        self.reason.clone().unwrap_or_else(|| self.to_string())
    }

    /// One error for several (a multi-channel operation that went on past each): the summary,
    /// then each error; the first one's kind. `None` when there were none.
    pub fn all_of(errors: Vec<Error>, summary: impl FnOnce(usize) -> String) -> Option<Error> {
        let kind = errors.first()?.kind;
        if errors.len() == 1 {
            return errors.into_iter().next();
        }
        let each: Vec<String> = errors.iter().map(ToString::to_string).collect();
        Some(Error::new(
            kind,
            format!("{}: {}", summary(errors.len()), each.join("; ")),
        ))
    }

    /// `{"error": "...", "kind": "..."}`, what engines read with `--output json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string(), "kind": self.kind })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = self.source.as_ref().map(ToString::to_string);
        let parts = self
            .context
            .iter()
            .map(String::as_str)
            .chain(Some(self.message.as_str()).filter(|m| !m.is_empty()))
            .chain(source.as_deref());
        for (i, part) in parts.enumerate() {
            if i > 0 {
                f.write_str(": ")?;
            }
            write_one_line(f, part)?;
        }
        if let Some(aftermath) = &self.aftermath {
            f.write_str("; ")?;
            write_one_line(f, aftermath)?;
        }
        Ok(())
    }
}

/// How much of a value a message quotes: enough to recognise it, never so much that a hostile
/// value (an annotation of 100 MB) makes the message itself the attack.
pub const QUOTE_LIMIT: usize = 200;

/// A value as a message quotes it: in double quotes with control characters escaped, and cut
/// after [`QUOTE_LIMIT`] characters with a note of its full length.
pub fn quote(value: &str) -> String {
    let (head, note) = cut(value, QUOTE_LIMIT);
    format!("{head:?}{note}")
}

/// The first `limit` characters of `text`, and what to say after them when that is not all of
/// it: `... (N bytes in all)`.
pub fn cut(text: &str, limit: usize) -> (&str, String) {
    match text.char_indices().nth(limit) {
        None => (text, String::new()),
        Some((end, _)) => (&text[..end], format!("... ({} bytes in all)", text.len())),
    }
}

/// Writes a whole message with one write(2) (a message written a character at a time to an
/// unbuffered stderr took minutes for a long one, and interleaves with other writers).
pub fn write_at_once(mut to: impl std::io::Write, line: &str) {
    let _ = to.write_all(line.as_bytes()).and_then(|()| to.flush());
}

/// Control characters as Rust escapes (`\n`, `\u{1b}`), so that the message stays on one line
/// and cannot drive a terminal, whatever the caller sent.
fn write_one_line(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            fmt::Write::write_char(f, c)?;
        }
    }
    Ok(())
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Adds what was being done to an error on its way out, keeping its kind (`Runtime` for
/// errors from the system).
pub trait Context<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }

    fn with_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| e.into().context(context()))
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Error {
        Error::new(Kind::Runtime, String::new()).caused_by(err)
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(err: rustix::io::Errno) -> Error {
        std::io::Error::from(err).into()
    }
}

impl From<nix::errno::Errno> for Error {
    fn from(err: nix::errno::Errno) -> Error {
        std::io::Error::from(err).into()
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
        assert_eq!(err.reason(), "not a number");
        assert_eq!(Error::not_found("x").exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn context_goes_first_and_keeps_the_kind() {
        let err = Error::invalid("mode", "rx", "must be rw or ro").context("io.hostchan.channel");
        assert_eq!(
            err.to_string(),
            r#"io.hostchan.channel: invalid mode "rx": must be rw or ro"#
        );
        assert_eq!(err.kind(), Kind::Invalid);
        assert_eq!(err.reason(), "must be rw or ro");
    }

    #[test]
    fn system_errors_keep_their_cause() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let err: Result<()> = Err(io).context("cannot read /x");
        let err = err.unwrap_err();
        assert_eq!(err.kind(), Kind::Runtime);
        assert!(
            err.to_string().starts_with("cannot read /x: No such file"),
            "{err}"
        );
        let source = std::error::Error::source(&err).expect("a source");
        assert!(source.to_string().contains("No such file"));
        let nested = Error::io("cannot remove /y", rustix::io::Errno::BUSY).context("gc");
        assert!(
            nested.to_string().starts_with("gc: cannot remove /y: "),
            "{nested}"
        );
    }

    #[test]
    fn every_message_is_one_line() {
        let err = Error::runtime("bad\nline\u{1b}[31m").context("in\rput");
        assert_eq!(err.to_string(), r"in\rput: bad\nline\u{1b}[31m");
    }

    #[test]
    fn several_errors_make_one_line() {
        assert!(Error::all_of(Vec::new(), |_| unreachable!()).is_none());
        let one = Error::all_of(vec![Error::not_found("a")], |_| unreachable!()).unwrap();
        assert_eq!(one.to_string(), "a");
        let two = Error::all_of(vec![Error::systemd("a"), Error::runtime("b\nc")], |n| {
            format!("{n} of 3 failed")
        })
        .unwrap();
        assert_eq!(two.to_string(), r"2 of 3 failed: a; b\nc");
        assert_eq!(two.kind(), Kind::Systemd);
    }

    #[test]
    fn quotes_are_cut() {
        assert_eq!(quote("a\nb"), r#""a\nb""#);
        let long = "é".repeat(100_000);
        let quoted = quote(&long);
        assert_eq!(
            quoted,
            format!("{:?}... (200000 bytes in all)", "é".repeat(QUOTE_LIMIT))
        );
        let err = Error::invalid("spec", "x".repeat(1 << 20), "is bad").context("annotation k");
        let line = err.to_string();
        assert!(line.len() < 300, "{}", line.len());
        assert!(
            line.ends_with("... (1048576 bytes in all): is bad"),
            "{line}"
        );
        assert_eq!(
            quote(&"y".repeat(QUOTE_LIMIT)),
            format!("{:?}", "y".repeat(QUOTE_LIMIT))
        );
    }

    #[test]
    fn json_has_the_kind() {
        let err = Error::invalid("size", "x", "not a size");
        assert_eq!(
            err.json(),
            serde_json::json!({"error": "invalid size \"x\": not a size", "kind": "invalid"})
        );
        assert_eq!(
            Error::already_exists("y").json()["kind"],
            serde_json::json!("already-exists")
        );
    }
}
