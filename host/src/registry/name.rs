//! Service names: the one rule every layer checks names against. Names double as DNS
//! labels (`http://<service>/`), registry keys and data-directory file names.

use thiserror::Error;

/// A name that is not an acceptable service name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid service name `{0}`: use 1 to 63 lower-case letters, digits and `-`, \
     starting with a letter and not ending with `-`"
)]
pub struct InvalidName(pub String);

/// Check that `name` is a service name: 1 to 63 of `a-z`, `0-9` and `-`, starting with
/// a letter and not ending with `-`.
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        // Quote at most a bounded prefix of what was sent.
        Err(InvalidName(name.chars().take(80).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "hello", "order-service", "b2"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Hello",
            "2b",
            "a_b",
            "a-",
            "a.b",
            &"x".repeat(64),
            "v1/x",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_error_quotes_a_bounded_prefix() {
        let error = validate_name(&"X".repeat(10_000)).expect_err("too long");
        assert_eq!(error.0.len(), 80);
    }
}
