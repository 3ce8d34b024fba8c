//! Where `OTEL_*` values come from, and the small parsers every variable shares.

use std::collections::HashMap;
use std::time::Duration;

use super::ConfigError;

/// The source of `OTEL_*` variables: the process environment, or a map given to
/// [`ApmBuilder::environment`](crate::ApmBuilder::environment) (tests, embedded use).
#[derive(Debug, Clone, Default)]
pub(crate) enum EnvSource {
    #[default]
    Process,
    Map(HashMap<String, String>),
}

impl EnvSource {
    /// The variable's value; an empty value counts as unset, as the OpenTelemetry
    /// specification asks.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        let value = match self {
            EnvSource::Process => std::env::var(name).ok(),
            EnvSource::Map(map) => map.get(name).cloned(),
        }?;
        let trimmed = value.trim();
        if trimmed.is_empty() {
            None
        } else {
            Some(trimmed.to_owned())
        }
    }

    /// The signal-specific variable if set, else the generic one; returns the
    /// name that supplied the value so errors can name it.
    pub(crate) fn get_either(&self, specific: &'static str, generic: &'static str) -> Option<(&'static str, String)> {
        self.get(specific)
            .map(|v| (specific, v))
            .or_else(|| self.get(generic).map(|v| (generic, v)))
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ConfigError::var(name, &v, "`true` or `false`")),
        }
    }

    pub(crate) fn millis(&self, name: &str) -> Result<Option<Duration>, ConfigError> {
        self.get(name)
            .map(|v| parse_millis(&v).ok_or_else(|| ConfigError::var(name, &v, "a whole number of milliseconds")))
            .transpose()
    }

    pub(crate) fn positive(&self, name: &str) -> Result<Option<usize>, ConfigError> {
        self.get(name)
            .map(|v| match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(ConfigError::var(name, &v, "a whole number greater than 0")),
            })
            .transpose()
    }
}

pub(crate) fn parse_millis(v: &str) -> Option<Duration> {
    v.parse::<u64>().ok().map(Duration::from_millis)
}

/// Parses the `key=value,key=value` lists of `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_EXPORTER_OTLP_HEADERS`; values are percent-decoded.
pub(crate) fn parse_key_values(name: &str, raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for item in raw.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(ConfigError::var(
                name,
                raw,
                format!("comma-separated key=value pairs (the item {item:?} has no '=')"),
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError::var(name, raw, format!("a non-empty key in {item:?}")));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| ConfigError::var(name, raw, format!("valid percent-encoding in the value of {key:?}")))?;
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// Decodes `%XX` escapes; `None` when an escape is malformed or the result is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_val(*bytes.get(i + 1)?)?;
            let lo = hex_val(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_are_split_trimmed_and_percent_decoded() {
        let kv = parse_key_values("X", " a=1 , b = hello%20world ,,").unwrap();
        assert_eq!(kv, vec![("a".into(), "1".into()), ("b".into(), "hello world".into())]);
    }

    #[test]
    fn key_value_without_equals_names_the_item() {
        let err = parse_key_values("OTEL_RESOURCE_ATTRIBUTES", "a=1,oops").unwrap_err();
        assert!(err.to_string().contains("OTEL_RESOURCE_ATTRIBUTES"), "{err}");
        assert!(err.to_string().contains("oops"), "{err}");
    }

    #[test]
    fn malformed_percent_escape_is_rejected() {
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("a%2Cb").as_deref(), Some("a,b"));
    }

    #[test]
    fn empty_variable_counts_as_unset() {
        let env = EnvSource::Map([("OTEL_SDK_DISABLED".to_owned(), "  ".to_owned())].into());
        assert_eq!(env.bool("OTEL_SDK_DISABLED").unwrap(), None);
    }
}
