//! [`ConfigError`]: one line naming the key, the value and what would be accepted.

use std::fmt;

/// Where a bad value came from, when that helps find it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    /// Not worth saying: the caller names the file it loaded, once (`vipgate: FILE: ...`).
    Unstated,
    /// An environment variable: the file would not show the value, so the message must.
    Env(String),
}

/// A configuration vipgate refuses: every problem found, at least one.
///
/// Its [`Display`](fmt::Display) is one line per [`Problem`], in the order of the file's
/// sections (workers, interfaces, xdp, nat, neighbors, icmp, log, control, metrics,
/// events), each `<key path>: <value> <problem>; <what would be accepted>`. For example
/// `interfaces[1].address: "198.18.0.1/33" is not an IPv4 prefix; expected a.b.c.d/len with
/// len 0 to 32`. It never names the file: the caller knows which file it loaded and says so
/// once.
///
/// Problems the reader of the file finds (a TOML syntax error, an unknown key, a value of
/// the wrong type) stop it, so they come alone; the validator goes on after a problem and
/// leaves out only the checks that depend on the value it refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Never empty.
    problems: Vec<Problem>,
}

/// One problem of a [`ConfigError`]: a key, its value, what is wrong and what would be
/// accepted.
///
/// Its [`Display`](fmt::Display) is one line,
/// `<key path>: <value> <problem>; <what would be accepted>`, followed by
/// `(set by environment variable VAR)` when the value came from one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    key: String,
    problem: String,
    origin: Origin,
}

impl Problem {
    /// The key path the problem is about, e.g. `nat.dnat[0].to` (empty when it is about the
    /// file as a whole, such as a TOML syntax error).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong and what would be accepted, without the key.
    pub fn problem(&self) -> &str {
        &self.problem
    }

    /// The environment variable that set the bad value, if one did.
    pub fn env_var(&self) -> Option<&str> {
        match &self.origin {
            Origin::Env(v) => Some(v),
            Origin::Unstated => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.problem)?;
        } else {
            write!(f, "{}: {}", self.key, self.problem)?;
        }
        match &self.origin {
            Origin::Unstated => Ok(()),
            Origin::Env(var) => write!(f, " (set by environment variable {var})"),
        }
    }
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            problems: vec![Problem {
                key: key.into(),
                problem: one_line(&problem.into()),
                origin: Origin::Unstated,
            }],
        }
    }

    /// All the problems of `errors`, in order; `None` when there are none.
    pub(crate) fn all(errors: Vec<ConfigError>) -> Option<ConfigError> {
        let problems: Vec<Problem> = errors.into_iter().flat_map(|e| e.problems).collect();
        (!problems.is_empty()).then_some(ConfigError { problems })
    }

    /// Marks every problem as set by `var`.
    pub(crate) fn set_by_env(mut self, var: &str) -> ConfigError {
        for p in &mut self.problems {
            p.origin = Origin::Env(var.to_string());
        }
        self
    }

    /// Marks each problem whose key an environment variable set, as `env_var_for` says.
    pub(crate) fn with_env_origins(
        mut self,
        env_var_for: &dyn Fn(&str) -> Option<String>,
    ) -> ConfigError {
        for p in &mut self.problems {
            if let Some(var) = env_var_for(&p.key) {
                p.origin = Origin::Env(var);
            }
        }
        self
    }

    /// Every problem found, in the order of the file's sections; at least one.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    fn first(&self) -> Option<&Problem> {
        self.problems.first()
    }

    /// The key path the first problem is about, e.g. `nat.dnat[0].to` (empty when it is about
    /// the file as a whole, such as a TOML syntax error).
    pub fn key(&self) -> &str {
        self.first().map_or("", Problem::key)
    }

    /// What is wrong with the first problem's value and what would be accepted, without the
    /// key.
    pub fn problem(&self) -> &str {
        self.first().map_or("", Problem::problem)
    }

    /// The environment variable that set the first problem's value, if one did.
    pub fn env_var(&self) -> Option<&str> {
        self.first().and_then(Problem::env_var)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Joins a multi-line message into one line: logs and `vipgate check` print one line per
/// error, and the TOML parser's messages come with a source excerpt over several lines.
pub(crate) fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Turns an error of the `config` crate into a [`ConfigError`] whose key is the key path
/// written the way the rest of vipgate writes it (`interfaces[0].name`).
///
/// `env_var_for` names the environment variable that set a key, if any.
pub(crate) fn from_config_crate(
    e: config::ConfigError,
    env_var_for: &dyn Fn(&str) -> Option<String>,
) -> ConfigError {
    let err = match e {
        config::ConfigError::FileParse { cause, .. } => toml_syntax(&cause.to_string()),
        other => {
            let (key, problem) = split(other);
            ConfigError::new(key, problem)
        }
    };
    read_error_origin(err, env_var_for)
}

/// Says which environment variable set a value the `config` crate could not read, if one did.
pub(crate) fn read_error_origin(
    err: ConfigError,
    env_var_for: &dyn Fn(&str) -> Option<String>,
) -> ConfigError {
    err.with_env_origins(env_var_for)
}

/// Key path and problem of a deserialization error.
fn split(e: config::ConfigError) -> (String, String) {
    match e {
        config::ConfigError::NotFound(key) => {
            (fix_path(&key), "missing; this key is required".into())
        }
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => (
            fix_path(&key.unwrap_or_default()),
            format!(
                "{unexpected} has the wrong type; expected {}",
                plain(expected)
            ),
        ),
        config::ConfigError::At { error, key, .. } => {
            let (inner_key, problem) = split(*error);
            let outer = fix_path(&key.unwrap_or_default());
            (join(&outer, &inner_key), problem)
        }
        config::ConfigError::Message(m) => message(&m),
        // Type, At and FileParse, the variants that print an origin (the file's path or
        // "the environment") after the message, are taken apart above without it.
        other => (String::new(), other.to_string()),
    }
}

/// A serde message. Unknown keys are reported by the map holding them, so their own name is
/// only in the text: it is moved into the key path.
fn message(m: &str) -> (String, String) {
    if let Some(rest) = m.strip_prefix("unknown field `") {
        if let Some((name, tail)) = rest.split_once('`') {
            let tail = tail.trim_start_matches(',').trim();
            let accepted = if tail == "there are no fields" {
                "this table takes no keys".to_string()
            } else {
                tail.to_string()
            };
            return (name.to_string(), format!("unknown key; {accepted}"));
        }
    }
    if let Some((found, expected)) = m
        .strip_prefix("invalid type: ")
        .and_then(|r| r.rsplit_once(", expected "))
    {
        return (
            String::new(),
            format!("{found} has the wrong type; expected {}", plain(expected)),
        );
    }
    if let Some((found, expected)) = m
        .strip_prefix("invalid value: ")
        .and_then(|r| r.rsplit_once(", expected "))
    {
        return (
            String::new(),
            format!("{found} is out of range; expected {}", plain(expected)),
        );
    }
    (String::new(), m.to_string())
}

/// serde names what it wanted in Rust's terms (`struct RawInterface`, `a sequence`); the
/// file's terms are tables and lists.
fn plain(expected: &str) -> &str {
    if expected.starts_with("struct ") || expected == "a map" {
        "a table"
    } else if expected == "a sequence" {
        "a list"
    } else {
        expected
    }
}

fn join(outer: &str, inner: &str) -> String {
    match (outer.is_empty(), inner.is_empty()) {
        (true, _) => inner.to_string(),
        (_, true) => outer.to_string(),
        _ if inner.starts_with('[') => format!("{outer}{inner}"),
        _ => format!("{outer}.{inner}"),
    }
}

/// The `config` crate joins an index and the key after it without a dot
/// (`interfaces[0]name`); vipgate writes `interfaces[0].name`.
fn fix_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut after_bracket = false;
    for c in key.chars() {
        if after_bracket && c != '[' && c != '.' {
            out.push('.');
        }
        after_bracket = c == ']';
        out.push(c);
    }
    out
}

/// A TOML syntax error: the parser's report is several lines (position, source excerpt with
/// a caret, message); this keeps the position, the offending line and the message.
fn toml_syntax(report: &str) -> ConfigError {
    let mut position = String::new();
    let mut excerpt = String::new();
    let mut problem = Vec::new();
    for line in report.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if let Some(p) = t.strip_prefix("TOML parse error at ") {
            position = p.to_string();
        } else if let Some((gutter, text)) = line.split_once('|') {
            // Excerpt lines are "<line number> | text"; caret lines have an empty gutter.
            if !gutter.trim().is_empty() && excerpt.is_empty() {
                excerpt = text.trim().to_string();
            }
        } else {
            problem.push(t.to_string());
        }
    }
    let problem = if problem.is_empty() {
        one_line(report)
    } else {
        problem.join("; ")
    };
    let at = if position.is_empty() {
        "TOML syntax error".to_string()
    } else {
        format!("TOML syntax error at {position}")
    };
    if excerpt.is_empty() {
        ConfigError::new("", format!("{at}: {problem}"))
    } else {
        ConfigError::new("", format!("{at}: {problem}; in `{excerpt}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_dots_after_indices() {
        assert_eq!(fix_path("interfaces[0]name"), "interfaces[0].name");
        assert_eq!(fix_path("nat.dnat[1]to"), "nat.dnat[1].to");
        assert_eq!(fix_path("a[0][1]b"), "a[0][1].b");
        assert_eq!(fix_path("a[0].b"), "a[0].b");
        assert_eq!(fix_path("workers.cores"), "workers.cores");
    }

    #[test]
    fn unknown_fields_move_into_the_key() {
        let (k, p) = message("unknown field `capacty`, expected one of `vips`, `capacity`");
        assert_eq!(k, "capacty");
        assert_eq!(p, "unknown key; expected one of `vips`, `capacity`");
        let (k, p) = message("unknown field `x`, there are no fields");
        assert_eq!(
            (k.as_str(), p.as_str()),
            ("x", "unknown key; this table takes no keys")
        );
        assert_eq!(join("nat", "capacty"), "nat.capacty");
        let (k, p) = message("invalid type: string \"a, expected b\", expected struct RawPool");
        assert_eq!(k, "");
        assert_eq!(
            p,
            "string \"a, expected b\" has the wrong type; expected a table"
        );
        let (_, p) = message("invalid value: integer `18446744073709551615`, expected an integer");
        assert_eq!(
            p,
            "integer `18446744073709551615` is out of range; expected an integer"
        );
        assert_eq!(join("interfaces", "[0].x"), "interfaces[0].x");
        assert_eq!(join("", "x"), "x");
    }

    #[test]
    fn syntax_reports_become_one_line() {
        let report = "TOML parse error at line 3, column 7\n  |\n3 | foo = \n  |       ^\n\
                      invalid string\nexpected `\"`, `'`\n";
        let e = toml_syntax(report);
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        assert_eq!(
            s,
            "TOML syntax error at line 3, column 7: invalid string; expected `\"`, `'`; in `foo =`"
        );
    }

    #[test]
    fn several_problems_are_one_line_each() {
        let e = ConfigError::all(vec![
            ConfigError::new("xdp.batch", "0 is out of range; expected 1 to 1024"),
            ConfigError::new("nat.capacity", "0 is out of range;\n expected 1 to 2"),
        ])
        .unwrap()
        .with_env_origins(&|k| (k == "nat.capacity").then(|| "VIPGATE_NAT__CAPACITY".into()));
        assert_eq!(
            e.to_string(),
            "xdp.batch: 0 is out of range; expected 1 to 1024\n\
             nat.capacity: 0 is out of range; expected 1 to 2 \
             (set by environment variable VIPGATE_NAT__CAPACITY)"
        );
        assert_eq!(e.key(), "xdp.batch");
        assert_eq!(e.env_var(), None);
        assert_eq!(e.problems()[1].key(), "nat.capacity");
        assert_eq!(e.problems()[1].env_var(), Some("VIPGATE_NAT__CAPACITY"));
        assert_eq!(ConfigError::all(Vec::new()), None);
    }

    #[test]
    fn display_names_the_origin() {
        let e = ConfigError::new("xdp.mode", "\"x\" is bad;\n expected y")
            .set_by_env("VIPGATE_XDP__MODE");
        assert_eq!(
            e.to_string(),
            "xdp.mode: \"x\" is bad; expected y (set by environment variable VIPGATE_XDP__MODE)"
        );
        assert_eq!(e.env_var(), Some("VIPGATE_XDP__MODE"));
        assert_eq!(e.problems().len(), 1);
        let e = ConfigError::new("", "cannot read the file: gone");
        assert_eq!(e.to_string(), "cannot read the file: gone");
        assert_eq!(e.key(), "");
    }
}
