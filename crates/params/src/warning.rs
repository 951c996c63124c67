//! [`ParamWarning`]: input that is accepted but probably not what was meant.

use std::fmt;

use crate::parser::{ENABLE_PROXY, HTTP_PROXY, PROXY_SERVER, PROXY_TLS_PIN, PROXY_TLS_PORT};

/// The keys this crate gives a meaning to.
pub const KNOWN_KEYS: [&str; 5] = [
    ENABLE_PROXY,
    PROXY_SERVER,
    PROXY_TLS_PIN,
    PROXY_TLS_PORT,
    HTTP_PROXY,
];

/// Something a parameter string says that is accepted (unknown keys are kept,
/// as the guide requires) but is most likely a mistake. See
/// [`Params::warnings`](crate::Params::warnings).
///
/// ```
/// use cloudproxy_params::ParamWarning;
///
/// let p = cloudproxy_params::parse(r#"{"rtc.enableproxy":true}"#)?;
/// assert_eq!(p.enable_proxy(), None, "an unknown key changes nothing");
/// let warnings = p.warnings();
/// assert_eq!(
///     warnings,
///     [ParamWarning::MisspelledKey {
///         key: "rtc.enableproxy".into(),
///         suggestion: "rtc.enable_proxy",
///     }]
/// );
/// assert_eq!(
///     warnings[0].to_string(),
///     "unknown key \"rtc.enableproxy\" is kept but has no effect: did you mean `rtc.enable_proxy`?"
/// );
/// # Ok::<(), cloudproxy_params::ParamError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParamWarning {
    /// An unknown key that differs from a known one only in case,
    /// whitespace, underscores or hyphens, or by one or two typing mistakes.
    MisspelledKey {
        /// The key as written.
        key: String,
        /// The known key it is closest to.
        suggestion: &'static str,
    },
}

impl fmt::Display for ParamWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MisspelledKey { key, suggestion } => write!(
                f,
                "unknown key {key:?} is kept but has no effect: did you mean `{suggestion}`?"
            ),
        }
    }
}

/// The known key `key` was most likely meant to be, if it is not one itself:
/// equal once case, whitespace, `_` and `-` are ignored, or within two
/// single-character edits (insert, delete, replace) of one, compared without
/// case and surrounding whitespace.
///
/// ```
/// use cloudproxy_params::suggest_key;
///
/// assert_eq!(suggest_key("Rtc.Enable_Proxy"), Some("rtc.enable_proxy"));
/// assert_eq!(suggest_key("rtc.enable_proxy "), Some("rtc.enable_proxy"));
/// assert_eq!(suggest_key("rtc.proxy_sever"), Some("rtc.proxy_server"));
/// assert_eq!(suggest_key("rtc.enable_proxy"), None, "already right");
/// assert_eq!(suggest_key("che.audio.level"), None, "another key altogether");
/// ```
#[must_use]
pub fn suggest_key(key: &str) -> Option<&'static str> {
    if KNOWN_KEYS.contains(&key) {
        return None;
    }
    let loose = loosen(key);
    if let Some(known) = KNOWN_KEYS.iter().find(|k| loosen(k) == loose) {
        return Some(known);
    }
    let lower = key.trim().to_lowercase();
    KNOWN_KEYS
        .iter()
        .map(|k| (edit_distance(&lower, k, MAX_EDITS + 1), *k))
        .filter(|(d, _)| *d <= MAX_EDITS)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edits allowed between a misspelled key and the known one.
const MAX_EDITS: usize = 2;

/// The key lowercased, without whitespace, `_` and `-`.
fn loosen(key: &str) -> String {
    key.chars()
        .filter(|c| !c.is_whitespace() && *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Levenshtein distance between `a` and `b` in characters, or `cap` when it
/// is at least `cap` (the work stops early: keys are short, but the input
/// may hold long ones).
fn edit_distance(a: &str, b: &str, cap: usize) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) >= cap {
        return cap;
    }
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let replace = previous[j] + usize::from(ca != cb);
            current[j + 1] = replace.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        if current.iter().all(|&d| d >= cap) {
            return cap;
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()].min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("kitten", "sitting", 10), 3);
        assert_eq!(edit_distance("", "abc", 10), 3);
        assert_eq!(edit_distance("abc", "abc", 10), 0);
        assert_eq!(edit_distance("abcdefgh", "a", 3), 3);
    }
}
