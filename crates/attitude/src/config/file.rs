//! Reading configuration files: text, TOML errors with their line and column, merging.

use std::path::Path;

use super::ConfigError;

/// Merges `over` into `base`: tables key by key, anything else replaced.
pub(super) fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A file's text, or an error that names the file.
pub(super) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A TOML error in `text` (from `origin`), with the line and column it points at.
/// `inline` and the values of a list file (one per line, `#` starts a comment), for the rule or
/// route called `name`.
pub(super) fn values(
    inline: &[String],
    file: Option<&Path>,
    name: &str,
) -> Result<Vec<String>, String> {
    let mut values = inline.to_vec();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{name}: cannot read file {}: {e}", path.display()))?;
        values.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    Ok(values)
}

pub(super) fn parse_error(e: &toml::de::Error, text: &str, origin: &str) -> ConfigError {
    let (line, column) = e
        .span()
        .map(|span| line_column(text, span.start))
        .unwrap_or((1, 1));
    ConfigError::Parse {
        path: origin.to_owned(),
        line,
        column,
        message: e.message().trim().to_owned(),
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
