//! Glob patterns for principals and aliases: `*` stands for any run of characters
//! (including none, and including `/`); everything else matches itself.
//! Why not globset/wildmatch: `*` is the only metacharacter, so a ~20-line matcher does
//! it, and their `?`, `[...]` and `**` would change the meaning of existing patterns.

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    text: String,
    parts: Vec<String>,
}

impl Glob {
    pub(crate) fn new(text: &str) -> Self {
        Glob {
            text: text.to_string(),
            parts: text.split('*').map(str::to_string).collect(),
        }
    }

    /// True if the pattern has no `*` and so matches only itself.
    #[cfg(test)]
    fn is_literal(&self) -> bool {
        self.parts.len() == 1
    }

    /// True if `s` matches the whole pattern.
    pub(crate) fn matches(&self, s: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(x) => x,
            None => return s.is_empty(),
        };
        let Some(mut tail) = s.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return tail.is_empty();
        };
        for part in middle {
            match tail.find(part.as_str()) {
                Some(i) => tail = &tail[i + part.len()..],
                None => return false,
            }
        }
        tail.len() >= last.len() && tail.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = Glob::new("spiffe://corp/payments/*");
        assert!(g.matches("spiffe://corp/payments/api"));
        assert!(g.matches("spiffe://corp/payments/a/b"));
        assert!(g.matches("spiffe://corp/payments/"));
        assert!(!g.matches("spiffe://corp/payments"));
        assert!(!g.matches("spiffe://corp/paymentsx/api"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("a*b*c").matches("abc"));
        assert!(Glob::new("a*b*c").matches("a-b-b-c"));
        assert!(!Glob::new("a*b*c").matches("a-c-b"));
        assert!(!Glob::new("ab*ba").matches("aba"));
        assert!(Glob::new("exact").matches("exact"));
        assert!(!Glob::new("exact").matches("exactly"));
        assert!(Glob::new("exact").is_literal());
        assert!(Glob::new("alias/pay-*").matches("alias/pay-1"));
        assert!(Glob::new("*-prod").matches("x-prod"));
        assert!(!Glob::new("*-prod").matches("x-prod2"));
    }
}
