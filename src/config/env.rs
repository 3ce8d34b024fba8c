//! Where `OTEL_*` values come from, and the small parsers every variable shares.

use std::collections::HashMap;
use std::time::Duration;

use super::ConfigError;
use crate::redact::hex_val;

/// The source of `OTEL_*` variables: the process environment, or a map given to
/// [`ApmBuilder::environment`](crate::ApmBuilder::environment) (tests, embedded use).
#[derive(Clone, Default)]
pub(crate) enum EnvSource {
    #[default]
    Process,
    Map(HashMap<String, String>),
}

/// Names the variables of a map, never their values: they may be headers with
/// credentials, URLs with a password, or anything the caller passed along.
impl std::fmt::Debug for EnvSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvSource::Process => f.write_str("Process"),
            EnvSource::Map(map) => {
                let mut names: Vec<&String> = map.keys().collect();
                names.sort();
                f.debug_tuple("Map").field(&names).finish()
            }
        }
    }
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

/// Parses the `key=value,key=value` list of `OTEL_RESOURCE_ATTRIBUTES`; values
/// are percent-decoded. (Headers, whose values are secrets, have
/// [`parse_headers`].)
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

/// Parses `OTEL_EXPORTER_OTLP_HEADERS` (or a signal's form): `name=value` pairs
/// separated by commas, values percent-decoded, each a valid HTTP header.
///
/// Errors name the variable, the item (by position) and, when it is a valid
/// one, the header name; never a value, nor an item that may be one (an item
/// without `=`, a name that is not a header name: `Authorization: Bearer ...`).
pub(crate) fn parse_headers(name: &str, raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, item) in raw.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let n = i + 1;
        let Some((key, value)) = item.split_once('=') else {
            return Err(ConfigError::headers(
                name,
                format!(
                    "item {n} has no '=': write comma-separated name=value pairs, such as authorization=Bearer%20..."
                ),
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError::headers(name, format!("item {n} has an empty header name")));
        }
        if http::HeaderName::from_bytes(key.as_bytes()).is_err() {
            return Err(ConfigError::headers(
                name,
                format!(
                    "the name of item {n} is not an HTTP header name (write name=value, with the value \
                     percent-encoded, not `name: value`)"
                ),
            ));
        }
        let value = percent_decode(value.trim()).ok_or_else(|| {
            ConfigError::headers(
                name,
                format!("the value of header {key:?} (item {n}) has a malformed percent escape"),
            )
        })?;
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(ConfigError::headers(
                name,
                format!(
                    "the value of header {key:?} (item {n}) is not a valid HTTP header value (a control character?)"
                ),
            ));
        }
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
    fn header_errors_name_the_variable_and_the_item_never_a_value() {
        const VAR: &str = "OTEL_EXPORTER_OTLP_HEADERS";
        for (raw, says) in [
            ("authorization=Bearer s3cr3t,Bearer t0p", "item 2 has no '='"),
            ("Authorization: Bearer s3cr3t==", "the name of item 1"),
            ("x-a=1,=s3cr3t", "item 2 has an empty header name"),
            ("authorization=Bearer%zzs3cr3t", "header \"authorization\" (item 1)"),
            ("authorization=Bearer%0As3cr3t", "header \"authorization\" (item 1)"),
        ] {
            let err = parse_headers(VAR, raw).unwrap_err();
            let (display, debug) = (err.to_string(), format!("{err:?}"));
            assert!(display.contains(VAR) && display.contains(says), "{raw}: {display}");
            assert!(
                !display.contains("s3cr3t") && !display.contains("t0p"),
                "{raw}: {display}"
            );
            assert!(!debug.contains("s3cr3t") && !debug.contains("t0p"), "{raw}: {debug}");
        }
        assert_eq!(
            parse_headers(VAR, " api-key = s%3Dcret ,,b=2").unwrap(),
            vec![("api-key".into(), "s=cret".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn debug_of_a_map_names_variables_without_values() {
        let env = EnvSource::Map(
            [
                (
                    "OTEL_EXPORTER_OTLP_HEADERS".to_owned(),
                    "authorization=Bearer s3cr3t".to_owned(),
                ),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                    "http://u:pw@h:4317".to_owned(),
                ),
            ]
            .into(),
        );
        let debug = format!("{env:?}");
        assert!(debug.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{debug}");
        assert!(!debug.contains("s3cr3t") && !debug.contains("pw@"), "{debug}");
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
