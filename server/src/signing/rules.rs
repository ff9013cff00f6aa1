//! The rules of a signature policy that need no key and no registry: its name, its
//! repository and tag selectors (doublestar patterns, matched by `globset`), and its
//! schedule (a cron expression in UTC, parsed by `croner`).
//!
//! Doublestar, as Tencent TCR and Huawei SWR use it: `*` matches within one path
//! segment, `**` across `/`, `?` one character other than `/`, `{a,b,c}` one of the
//! alternatives. Nothing else is special: a pattern holds only what a repository name
//! or tag may hold, plus those. A refused pattern's error names the pattern and the
//! (0-based, in characters) position of the first thing wrong with it.

use globset::{GlobBuilder, GlobMatcher};

use super::shown;

/// Longest pattern accepted.
pub(crate) const MAX_PATTERN: usize = 512;
/// Shortest and longest policy name.
const NAME_LEN: std::ops::RangeInclusive<usize> = 2..=50;

/// Why a rule was refused. Each names what the caller wrote (cut to a readable length).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RuleError {
    #[error(
        "policy name {0:?} is invalid: 2-50 characters of a-z, 0-9 and the separators \
         . _ - /, not starting or ending with a separator, no two separators in a row"
    )]
    Name(String),
    #[error("pattern {pattern:?} is invalid at position {position}: {problem}")]
    Pattern {
        pattern: String,
        position: usize,
        problem: String,
    },
    #[error("cron expression {expr:?} is invalid: {problem}")]
    Cron { expr: String, problem: String },
}

fn is_separator(c: char) -> bool {
    matches!(c, '.' | '_' | '-' | '/')
}

/// Checks a policy name: 2-50 characters of lower-case letters, digits and the
/// separators `.` `_` `-` `/`, not starting or ending with a separator, and no two
/// separators in a row.
pub(crate) fn check_name(name: &str) -> Result<(), RuleError> {
    let bad = || RuleError::Name(shown(name));
    let chars: Vec<char> = name.chars().collect();
    if !NAME_LEN.contains(&chars.len()) {
        return Err(bad());
    }
    if !chars
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || is_separator(c))
    {
        return Err(bad());
    }
    let (first, last) = (chars[0], chars[chars.len() - 1]);
    if is_separator(first) || is_separator(last) {
        return Err(bad());
    }
    if chars
        .windows(2)
        .any(|w| is_separator(w[0]) && is_separator(w[1]))
    {
        return Err(bad());
    }
    Ok(())
}

/// A compiled repository or tag selector.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    matcher: GlobMatcher,
}

impl Pattern {
    /// Checks and compiles a doublestar pattern.
    pub(crate) fn new(text: &str) -> Result<Pattern, RuleError> {
        let bad = |position: usize, problem: &str| RuleError::Pattern {
            pattern: shown(text),
            position,
            problem: problem.to_string(),
        };
        let chars: Vec<char> = text.chars().collect();
        if chars.is_empty() {
            return Err(bad(0, "empty pattern"));
        }
        if chars.len() > MAX_PATTERN {
            return Err(bad(MAX_PATTERN, "longer than 512 characters"));
        }
        // Where the open alternative group started, if one is open.
        let mut open: Option<usize> = None;
        for (i, &c) in chars.iter().enumerate() {
            match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' | '/' | '*' | '?' => {}
                '{' if open.is_some() => {
                    return Err(bad(i, "nested '{' (alternatives do not nest)"));
                }
                '{' => open = Some(i),
                '}' if open.is_none() => return Err(bad(i, "'}' without '{'")),
                '}' => open = None,
                ',' if open.is_none() => return Err(bad(i, "',' outside '{...}'")),
                ',' => {}
                _ => {
                    return Err(bad(
                        i,
                        &format!(
                            "{c:?} is not allowed (letters, digits, . _ - / and the \
                             wildcards * ** ? {{a,b}})"
                        ),
                    ));
                }
            }
            if c == '*' && i >= 2 && chars[i - 1] == '*' && chars[i - 2] == '*' {
                return Err(bad(i - 2, "'***' (use * or **)"));
            }
            if c == '*' && i >= 1 && chars[i - 1] == '*' && open.is_some() {
                return Err(bad(
                    i - 1,
                    "'**' inside '{...}' (write the alternatives out)",
                ));
            }
        }
        if let Some(i) = open {
            return Err(bad(i, "'{' is never closed"));
        }
        // globset's `**` crosses `/` only as a whole path segment (`a/**/b`, `**/b`,
        // `a/**`); `**` inside a segment (`app-**`) means: anything, slashes included.
        let glob = expand_inner_doublestar(text);
        let matcher = GlobBuilder::new(&glob)
            .literal_separator(true)
            .backslash_escape(false)
            .build()
            .map_err(|e| bad(0, &e.kind().to_string()))?
            .compile_matcher();
        Ok(Pattern { matcher })
    }

    /// Whether `candidate` (a repository path below the namespace, or a tag) matches.
    pub(crate) fn matches(&self, candidate: &str) -> bool {
        self.matcher.is_match(candidate)
    }
}

/// Rewrites each `**` that is not a whole path segment so globset lets it cross `/`:
/// `x**y` becomes `x{*,*/**/*}y` (within the segment, or across any number of them).
fn expand_inner_doublestar(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'*' && b.get(i + 1) == Some(&b'*') {
            let starts = i == 0 || b[i - 1] == b'/';
            let ends = i + 2 == b.len() || b[i + 2] == b'/';
            if starts && ends {
                out.push_str("**");
            } else {
                out.push_str("{*,*/**/*}");
            }
            i += 2;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// A policy's scope: its repository selectors, its tag selectors, and whether manifests
/// pushed by digest without a tag are signed. No repository selector matches no
/// repository; no tag selector matches every tag.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    pub(crate) repositories: Vec<Pattern>,
    pub(crate) tags: Vec<Pattern>,
    pub(crate) untagged: bool,
}

impl Scope {
    /// Whether a push of `repository` (below the namespace, e.g. `app-web` for
    /// `team/app-web`) with `tag` (None: by digest only) is in scope.
    pub(crate) fn covers(&self, repository: &str, tag: Option<&str>) -> bool {
        if !self.repositories.iter().any(|p| p.matches(repository)) {
            return false;
        }
        match tag {
            None => self.untagged,
            Some(t) => self.tags.is_empty() || self.tags.iter().any(|p| p.matches(t)),
        }
    }
}

/// A checked cron schedule (5 fields, or 6 with seconds first), in UTC.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    cron: croner::Cron,
}

impl Schedule {
    /// Parses a cron expression of 5 or 6 fields.
    pub(crate) fn new(expr: &str) -> Result<Schedule, RuleError> {
        let fields = expr.split_whitespace().count();
        let bad = |problem: String| RuleError::Cron {
            expr: shown(expr),
            problem,
        };
        if !(5..=6).contains(&fields) {
            return Err(bad(format!(
                "{fields} fields (give 5, or 6 with seconds first)"
            )));
        }
        // Plain cron only: croner also takes L, W, # and ?, whose searches for a next
        // run can take seconds (found by fuzzing); a policy does not need them.
        for field in expr.split_whitespace() {
            if let Some(problem) = field_problem(field) {
                return Err(bad(format!("field {:?}: {problem}", shown(field))));
            }
        }
        let cron = croner::Cron::new(expr)
            .with_seconds_optional()
            .parse()
            .map_err(|e| bad(e.to_string()))?;
        let schedule = Schedule { cron };
        // A date no month has (30 February): croner searches to its year limit and
        // finds nothing; say so now rather than keep a policy that never runs.
        if schedule
            .next_after(time::OffsetDateTime::UNIX_EPOCH)
            .is_none()
        {
            return Err(bad("never fires (no month has that day)".into()));
        }
        Ok(schedule)
    }

    /// The first run strictly after `after` (UTC), if any.
    pub(crate) fn next_after(&self, after: time::OffsetDateTime) -> Option<time::OffsetDateTime> {
        let t = chrono::DateTime::<chrono::Utc>::from_timestamp(after.unix_timestamp(), 0)?;
        let next = self.cron.find_next_occurrence(&t, false).ok()?;
        time::OffsetDateTime::from_unix_timestamp(next.timestamp()).ok()
    }
}

/// What is wrong with one cron field, if anything: a comma-separated list of `*`, `N`
/// or `N-M`, each optionally followed by `/STEP`.
fn field_problem(field: &str) -> Option<&'static str> {
    let number = |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        if step.is_some_and(|s| !number(s)) {
            return Some("a step must be a number");
        }
        let ok = range == "*"
            || number(range)
            || range
                .split_once('-')
                .is_some_and(|(a, b)| number(a) && number(b));
        if !ok {
            return Some("use *, N, N-M, each with an optional /STEP, separated by commas");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn position(s: &str) -> usize {
        match Pattern::new(s) {
            Err(RuleError::Pattern { position, .. }) => position,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    #[test]
    fn names_follow_the_registry_rules() {
        for ok in ["ab", "team-a", "team/app.web_1", "a1", &"x".repeat(50)] {
            check_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "a",
            &"x".repeat(51),
            "Team",
            "-ab",
            "ab-",
            "/ab",
            "a--b",
            "a./b",
            "a b",
            "ab!",
            "",
            "é1",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn star_stays_in_one_segment_doublestar_crosses() {
        let star = p("app-*");
        assert!(star.matches("app-web"));
        assert!(star.matches("app-"));
        assert!(!star.matches("app-web/sub"));
        assert!(!star.matches("db"));
        let deep = p("app-**");
        assert!(deep.matches("app-web"));
        assert!(deep.matches("app-web/sub/x"));
        let seg = p("**/web");
        assert!(seg.matches("web"));
        assert!(seg.matches("a/b/web"));
        assert!(!seg.matches("a/b/web2"));
        let mid = p("a/**/z");
        assert!(mid.matches("a/z"));
        assert!(mid.matches("a/b/c/z"));
        let all = p("**");
        assert!(all.matches("x/y/z"));
    }

    #[test]
    fn question_mark_and_alternatives() {
        let q = p("v?");
        assert!(q.matches("v1"));
        assert!(!q.matches("v10"));
        assert!(!p("a?b").matches("a/b"));
        let alt = p("{web,api}-*");
        assert!(alt.matches("web-1"));
        assert!(alt.matches("api-x"));
        assert!(!alt.matches("db-1"));
        let tags = p("v{1,2}.*");
        assert!(tags.matches("v1.0"));
        assert!(!tags.matches("v3.0"));
    }

    #[test]
    fn bad_patterns_name_their_position() {
        assert_eq!(position("app-{web"), 4);
        assert_eq!(position("app-}"), 4);
        assert_eq!(position("{a,{b}}"), 3);
        assert_eq!(position("a,b"), 1);
        assert_eq!(position("app[0-9]"), 3);
        assert_eq!(position("app\\*"), 3);
        assert_eq!(position("a***"), 1);
        assert_eq!(position("{a**,b}"), 2);
        assert_eq!(position(""), 0);
        assert_eq!(position(&"a".repeat(513)), 512);
        Pattern::new(&"a".repeat(512)).unwrap();
        let msg = Pattern::new("app-{web").unwrap_err().to_string();
        assert!(
            msg.contains("app-{web") && msg.contains("position 4"),
            "{msg}"
        );
    }

    #[test]
    fn scope_needs_a_repository_match_and_a_tag_match_or_untagged() {
        let scope = Scope {
            repositories: vec![p("app-*")],
            tags: vec![p("v*")],
            untagged: false,
        };
        assert!(scope.covers("app-web", Some("v1")));
        assert!(!scope.covers("app-web", Some("dev")));
        assert!(!scope.covers("db", Some("v1")));
        assert!(!scope.covers("app-web", None));
        let any_tag = Scope {
            repositories: vec![p("**")],
            tags: vec![],
            untagged: true,
        };
        assert!(any_tag.covers("x/y", Some("anything")));
        assert!(any_tag.covers("x", None));
        assert!(!Scope::default().covers("x", Some("v1")));
    }

    #[test]
    fn cron_takes_five_or_six_fields_in_utc() {
        let s = Schedule::new("30 2 * * *").unwrap();
        let from = time::macros::datetime!(2026-12-06 17:00 UTC);
        assert_eq!(
            s.next_after(from),
            Some(time::macros::datetime!(2026-12-07 02:30 UTC))
        );
        let six = Schedule::new("15 */10 * * * *").unwrap();
        assert_eq!(
            six.next_after(from),
            Some(time::macros::datetime!(2026-12-06 17:00:15 UTC))
        );
        for bad in [
            "",
            "* * * *",
            "* * * * * * *",
            "61 * * * *",
            "a b c d e",
            "* * 32 * *",
            "15 */10 L * * *",
            "* * , 8 ,",
            "0 0 ? * MON",
            "0 0 1W * *",
            "0 0 * * 5#3",
            "*/ * * * *",
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
        ] {
            let e = Schedule::new(bad).unwrap_err();
            assert!(matches!(e, RuleError::Cron { .. }), "{bad:?}: {e:?}");
        }
    }
}
