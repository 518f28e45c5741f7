//! Per-client session settings: what a client asked for at startup and with `SET`, the SQL that
//! reads them from the backend, and the SQL that moves the shared backend from one client's
//! session-level settings to another's.
//!
//! A client's startup options (and login role) are the backend's connection defaults while it
//! runs, where the backend supports them; what it changes at session level (`SET`,
//! `set_config`, in any function) is read back from the backend (`pg_settings.source`) and kept
//! as its overrides. Only the difference between the overrides applied on the backend and the
//! next owner's is sent, so clients with equal settings switch for free.

use std::collections::BTreeMap;

use crate::protocol::backend::text_rows;

/// Setting names mapped to values, in `current_setting` form when they came from the backend.
pub(crate) type Settings = BTreeMap<String, String>;

/// Names whose values follow from the identity and must be applied first (to regain privilege)
/// and last (to drop it), in this order.
const IDENTITY: [&str; 2] = ["session_authorization", "role"];

/// SQL listing the settings the session itself changed (`SET`, `set_config`), with their values,
/// then its role (`none` when not set) and session user.
///
/// `role` and `session_authorization` are hidden from `pg_settings`; the `transaction_*`
/// settings only mirror `default_transaction_*` outside a transaction.
pub(crate) const SESSION_SQL: &str = "SELECT name, current_setting(name) FROM pg_catalog.pg_settings \
     WHERE source = 'session' AND name NOT LIKE 'transaction\\_%' \
     UNION ALL SELECT 'role', current_setting('role') \
     UNION ALL SELECT 'session_authorization', session_user";

/// [`SESSION_SQL`], plus the custom (dotted) settings `custom`, which `pg_settings` does not
/// list, with their values (empty or NULL when unset).
pub(crate) fn session_sql(custom: &std::collections::BTreeSet<String>) -> String {
    if custom.is_empty() {
        return SESSION_SQL.to_owned();
    }
    let names: Vec<String> = custom.iter().map(|name| literal(name)).collect();
    format!(
        "{SESSION_SQL} UNION ALL SELECT name, pg_catalog.current_setting(name, true) \
         FROM pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[]) AS name",
        names.join(", ")
    )
}

/// SQL listing the current values of the settings `names`, by those names.
pub(crate) fn values_sql(names: &[String]) -> String {
    let names: Vec<String> = names.iter().map(|name| literal(name)).collect();
    format!(
        "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[]) AS name",
        names.join(", ")
    )
}

/// SQL listing every setting a session can change, with its current value.
///
/// `role` and `session_authorization` are hidden from `pg_settings` (`GUC_NO_SHOW_ALL`), and the
/// `transaction_*` settings only mirror `default_transaction_*` outside a transaction. The
/// session user is read with `session_user`: the single-user backend never sets the
/// `session_authorization` setting of its own user, which reads as empty.
pub(crate) const SNAPSHOT_SQL: &str = "SELECT name, current_setting(name) FROM pg_catalog.pg_settings \
     WHERE context IN ('user', 'superuser') AND name NOT LIKE 'transaction\\_%' \
     UNION ALL SELECT 'role', current_setting('role') \
     UNION ALL SELECT 'session_authorization', session_user";

/// Startup-packet parameters that are not settings.
const NOT_SETTINGS: [&str; 5] = ["user", "database", "options", "replication", "_pq_"];

/// Splits a client's startup parameters into settings overrides.
///
/// `options` is parsed like PostgreSQL's `pg_split_opts`: whitespace separates arguments, a
/// backslash escapes the next character, and `-c name=value` or `--name=value` set a value.
pub(crate) fn from_startup(params: &[(String, String)]) -> Result<Settings, String> {
    let mut res = Settings::new();
    for (name, value) in params {
        if name == "options" {
            parse_options(value, &mut res)?;
        } else if !NOT_SETTINGS.contains(&name.as_str()) && !name.starts_with("_pq_.") {
            res.insert(name.to_ascii_lowercase(), value.clone());
        }
    }
    Ok(res)
}

fn parse_options(options: &str, res: &mut Settings) -> Result<(), String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    let mut in_arg = false;
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            if in_arg {
                args.push(std::mem::take(&mut current));
                in_arg = false;
            }
        } else if c == '\\' {
            in_arg = true;
            if let Some(next) = chars.next() {
                current.push(next);
            }
        } else {
            in_arg = true;
            current.push(c);
        }
    }
    if in_arg {
        args.push(current);
    }
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let assignment = if arg == "-c" {
            args.next().ok_or_else(|| "missing argument for -c in options".to_owned())?
        } else if let Some(rest) = arg.strip_prefix("-c") {
            rest.to_owned()
        } else if let Some(rest) = arg.strip_prefix("--") {
            rest.to_owned()
        } else {
            return Err(format!("unsupported command-line option \"{arg}\" in options"));
        };
        let Some((name, value)) = assignment.split_once('=') else {
            return Err(format!("-c {assignment} requires a value"));
        };
        res.insert(name.replace('-', "_").to_ascii_lowercase(), value.to_owned());
    }
    Ok(())
}

/// Quotes `s` as an SQL string literal (standard conforming: only quotes are doubled).
pub(crate) fn literal(s: &str) -> String {
    let mut res = String::with_capacity(s.len() + 2);
    if s.contains('\\') {
        // E'' works whatever standard_conforming_strings is.
        res.push_str("E'");
        for c in s.chars() {
            if c == '\'' || c == '\\' {
                res.push(c);
            }
            res.push(c);
        }
    } else {
        res.push('\'');
        for c in s.chars() {
            if c == '\'' {
                res.push(c);
            }
            res.push(c);
        }
    }
    res.push('\'');
    res
}

/// The SQL that moves the backend from session-level overrides `applied` to `target`, or
/// `None` when they are equal. Names `target` lacks are `RESET` (to the connection default),
/// the others set with `set_config`, in name order.
///
/// Identity (`session_authorization`, `role`) goes back to the backend's own user, a superuser,
/// first, so the rest runs privileged, and to the target's last: its own session
/// authorization, or `RESET` to the connection default (the login role), then its role.
pub(crate) fn switch_sql(applied: &Settings, target: &Settings, backend_user: &str) -> Option<String> {
    if applied == target {
        return None;
    }
    let mut res = String::new();
    let identity_changes = IDENTITY.iter().any(|n| applied.get(*n) != target.get(*n));
    if identity_changes {
        res.push_str(&format!("RESET ROLE; SET SESSION AUTHORIZATION {}; ", ident(backend_user)));
    }
    for name in applied.keys() {
        if !IDENTITY.contains(&name.as_str()) && !target.contains_key(name) {
            res.push_str(&format!("RESET {}; ", ident(name)));
        }
    }
    let calls: Vec<String> = target
        .iter()
        .filter(|(name, value)| !IDENTITY.contains(&name.as_str()) && applied.get(*name) != Some(*value))
        .map(|(name, value)| set_call(name, value))
        .collect();
    if !calls.is_empty() {
        res.push_str(&format!("SELECT {}; ", calls.join(", ")));
    }
    if identity_changes {
        match target.get("session_authorization") {
            Some(user) => res.push_str(&format!("SET SESSION AUTHORIZATION {}; ", ident(user))),
            None => res.push_str("RESET SESSION AUTHORIZATION; "),
        }
        if let Some(role) = target.get("role") {
            res.push_str(&format!("SET ROLE {}; ", ident(role)));
        }
    }
    Some(res)
}

/// Quotes `name` as an SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn set_call(name: &str, value: &str) -> String {
    format!("pg_catalog.set_config({}, {}, false)", literal(name), literal(value))
}

/// The session-level overrides in rows of [`SESSION_SQL`], for a client logged in as `login`:
/// its role unless `none`, its session user unless `login`.
pub(crate) fn session_overrides(rows: &Settings, login: &str) -> Settings {
    rows.iter()
        .filter(|(name, value)| match name.as_str() {
            "role" => value.as_str() != "none",
            "session_authorization" => value.as_str() != login,
            // A custom setting that is unset reads as empty; any other may be set to empty
            // (`set_config('search_path', '', false)`, as pg_dump does).
            name => !name.contains('.') || !value.is_empty(),
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// Reads the two-column text rows (`DataRow`s) of a backend output into a map. Keys are lower
/// case everywhere (`DateStyle` is `datestyle`), as setting names are case-insensitive.
pub(crate) fn rows(output: &[u8]) -> Settings {
    let mut res = Settings::new();
    for row in text_rows(output) {
        if let [Some(name), value] = row.as_slice()
            && !name.is_empty()
        {
            res.insert(name.to_ascii_lowercase(), value.clone().unwrap_or_default());
        }
    }
    res
}
