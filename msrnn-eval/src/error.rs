//! The library's errors. A bad setting names the setting (`depths`, `batch`) so that each face can
//! say it in its own words (the CLI as `--depths`, Python as a keyword).

/// What can go wrong in an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting the task cannot run with; `message` follows the setting's name
    /// (`depths` + ` 1.5: a depth is ...`).
    #[error("{}", render_names(&format!("{setting}{message}"), &|n| n.to_string()))]
    Setting { setting: &'static str, message: String },

    /// The model, the policies or a text refused: what was being done, and why.
    /// (The cause is part of the message, not a `source()`, so that a chain printed by the caller
    /// does not say it twice.)
    #[error("{context}: {cause}")]
    Core { context: String, cause: Box<dyn std::error::Error + Send + Sync> },

    /// A file that cannot be read, or a document that is not a result of this schema.
    #[error("{0}")]
    Document(String),

    /// Shards that are not the parts of one grid.
    #[error("{0}")]
    Merge(String),

    /// The caller's cancellation flag was seen between steps.
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A bad setting: `setting("batch", " must be at least 1")`. The message may name other
    /// settings as `{name}`, which [`Error::render`] writes in the face's words.
    pub fn setting(setting: &'static str, message: impl Into<String>) -> Self {
        Error::Setting { setting, message: message.into() }
    }

    /// Wraps a lower error with what was being done.
    pub fn core(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Core { context: context.into(), cause: Box::new(source) }
    }
}

impl Error {
    /// The message with setting names written by `name` (the CLI: `tokens` -> `--tokens`).
    pub fn render(&self, name: &dyn Fn(&str) -> String) -> String {
        match self {
            Error::Setting { setting, message } => format!("{}{}", name(setting), render_names(message, name)),
            other => other.to_string(),
        }
    }
}

/// Replaces each `{name}` (lower case letters and `_`) in `text` by `name(name)`.
pub fn render_names(text: &str, name: &dyn Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if close > 0 && after[..close].bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => {
                out.push_str(&name(&after[..close]));
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `.context(...)` for the core's and the model kit's results.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::core(what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_named_in_the_faces_words() {
        let e = Error::setting("text", " a.txt has 3 tokens, fewer than {tokens} 8 ({X} stays)");
        assert_eq!(e.to_string(), "text a.txt has 3 tokens, fewer than tokens 8 ({X} stays)");
        let flag = |n: &str| format!("--{}", n.replace('_', "-"));
        assert_eq!(e.render(&flag), "--text a.txt has 3 tokens, fewer than --tokens 8 ({X} stays)");
        assert_eq!(Error::setting("answer_tokens", " 4").render(&flag), "--answer-tokens 4");
        assert_eq!(render_names("{} {a_b} {", &flag), "{} --a-b {");
    }
}
