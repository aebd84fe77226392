//! Service name patterns: `*` matches any run of characters, `?` any one. Used by
//! token scopes and by inbound call policies.

/// Check a service pattern: 1 to 64 of the characters of service names, `*` and `?`.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    let valid = !pattern.is_empty()
        && pattern.len() <= 64
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*' | b'?'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid service pattern `{}`: use 1 to 64 of letters, digits, `-`, `_`, `.`, \
             `*` (any run) and `?` (any one)",
            pattern.chars().take(64).collect::<String>()
        ))
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters and `?`
/// any one. Linear in time and space (no backtracking blow-up).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it is matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((star_pi, star_ni)) = star {
            pi = star_pi + 1;
            ni = star_ni + 1;
            star = Some((star_pi, star_ni + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("shop-*", "shop-orders"));
        assert!(glob_matches("shop-*", "shop-"));
        assert!(!glob_matches("shop-*", "shopping"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("*-api-*", "orders-api-v2"));
        assert!(!glob_matches("orders", "orders2"));
        assert!(
            glob_matches(&"*a".repeat(30), &"a".repeat(64)),
            "no blow-up"
        );
    }

    #[test]
    fn patterns_are_validated() {
        assert!(validate_pattern("shop-*").is_ok());
        assert!(validate_pattern("").is_err());
        assert!(validate_pattern("a/b").is_err());
        assert!(validate_pattern(&"a".repeat(65)).is_err());
    }
}
