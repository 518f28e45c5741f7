//! What the host learns about session state from inside the backend, and the defaults it sets
//! there: utility commands and session-changing builtins are recorded by any route, `RESET`
//! returns to PostgreSQL's defaults, and connection defaults are what `RESET` returns to.

use pglite_host::SessionEvents;

use crate::support::{on_each_release, scalar};

/// `DISCARD ALL` on its own (it cannot run in a multi-statement query's implicit block).
fn discard_all(pg: &pglite_host::Pglite) {
    assert_eq!(crate::support::run(pg, "DISCARD ALL"), crate::support::Outcome::Rows(Vec::new()));
}

fn events_of(pg: &pglite_host::Pglite, sql: &str) -> SessionEvents {
    pg.take_session_events();
    let outcome = crate::support::run(pg, sql);
    assert!(matches!(outcome, crate::support::Outcome::Rows(_)), "{sql}: {outcome:?}");
    pg.take_session_events()
}

#[test]
fn session_changes_are_recorded_by_any_route() {
    on_each_release(|version, pg| {
        let utility = SessionEvents { utility: true, ..SessionEvents::default() };
        let objects = SessionEvents { objects: true, ..SessionEvents::default() };
        assert!(events_of(pg, "SELECT 1").is_empty(), "{version}");
        assert_eq!(events_of(pg, "RESET ALL"), utility, "{version}");
        assert!(events_of(pg, "SELECT 1").is_empty(), "{version}");
        assert_eq!(events_of(pg, "SET work_mem = '77MB'; SELECT 1"), utility, "{version}");
        // Inside a DO block and a function.
        assert_eq!(events_of(pg, "DO $$BEGIN PERFORM 1; END$$; SELECT 1"), objects, "{version}");
        let both = SessionEvents { utility: true, objects: true, ..SessionEvents::default() };
        assert_eq!(events_of(pg, "DO $$BEGIN SET work_mem = '78MB'; END$$; SELECT 1"), both, "{version}");
        assert_eq!(events_of(pg, "CREATE TABLE plain(x int); DROP TABLE plain; SELECT 1"), objects, "{version}");
        scalar(
            pg,
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$BEGIN CREATE TEMP TABLE t(x int); RETURN 1; END$$; SELECT 1",
        );
        assert_eq!(events_of(pg, "SELECT f()"), objects, "{version}");
        // Commands that leave the session alone, and those of cursors and statements.
        let quiet = "BEGIN; SHOW work_mem; DECLARE c CURSOR FOR SELECT 1; FETCH c; COMMIT; EXPLAIN SELECT 1";
        assert_eq!(events_of(pg, quiet), SessionEvents { cursors: true, ..SessionEvents::default() }, "{version}");
        let prepared = "PREPARE p AS SELECT 1; EXECUTE p; DEALLOCATE p; SELECT 1";
        assert_eq!(
            events_of(pg, prepared),
            SessionEvents { statements: true, ..SessionEvents::default() },
            "{version}"
        );
        // set_config: only a session-level change counts. Custom settings are named.
        let custom = events_of(pg, "SELECT set_config('app.tenant', '42', false)");
        assert!(custom.settings && custom.custom_settings == ["app.tenant"], "{version}: {custom:?}");
        let custom = events_of(pg, "DO $$BEGIN SET App.Other = 'x'; END$$; SELECT 1");
        assert_eq!(custom.custom_settings, ["app.other"], "{version}");
        let local = events_of(pg, "BEGIN; SELECT set_config('app.tenant', '7', true); COMMIT; SELECT 1");
        assert!(local.is_empty(), "{version}: {local:?}");
        assert!(events_of(pg, "SELECT pg_advisory_lock(1)").locks, "{version}");
        assert!(events_of(pg, "SELECT pg_advisory_unlock_all()").locks, "{version}");
        assert!(
            !events_of(pg, "SELECT pg_advisory_xact_lock(1)").locks,
            "{version}: transaction-level locks end with it"
        );
    });
}

#[test]
fn reset_returns_to_postgresql_defaults() {
    on_each_release(|version, pg| {
        let defaults = "SELECT current_setting('search_path') || ' ' || current_setting('enable_seqscan') || ' ' \
                        || current_setting('allow_system_table_mods')";
        assert_eq!(scalar(pg, defaults), "\"$user\", public on off", "{version}");
        scalar(pg, "SET search_path = pg_catalog; SET enable_seqscan = off; RESET ALL; SELECT 1");
        assert_eq!(scalar(pg, defaults), "\"$user\", public on off", "{version}");
        scalar(pg, "SET search_path = pg_catalog; SELECT 1");
        discard_all(pg);
        assert_eq!(scalar(pg, defaults), "\"$user\", public on off", "{version}");
        // Tables land where PostgreSQL puts them.
        scalar(pg, "RESET ALL; CREATE TABLE landed(x int); SELECT 1");
        assert_eq!(scalar(pg, "SELECT relnamespace::regnamespace FROM pg_class WHERE relname = 'landed'"), "public");
    });
}

#[test]
fn connection_defaults_are_what_reset_returns_to() {
    on_each_release(|version, pg| {
        scalar(pg, "CREATE ROLE app SUPERUSER LOGIN; SELECT 1");
        let defaults = [
            ("TimeZone".to_owned(), "Asia/Tokyo".to_owned()),
            ("application_name".to_owned(), "app".to_owned()),
            ("session_authorization".to_owned(), "app".to_owned()),
        ];
        assert_eq!(pg.set_connection_defaults(&defaults).unwrap(), Vec::<String>::new());
        assert!(pg.take_session_events().is_empty(), "the host's own changes are not recorded");
        let state = "SELECT current_setting('TimeZone') || ' ' || current_setting('application_name') || ' ' \
                     || current_user || ' ' || session_user";
        assert_eq!(scalar(pg, state), "Asia/Tokyo app app app", "{version}");
        scalar(
            pg,
            "SET TimeZone = 'UTC'; SET application_name = 'other'; SET SESSION AUTHORIZATION postgres; SELECT 1",
        );
        assert_eq!(scalar(pg, state), "UTC other postgres postgres", "{version}");
        scalar(pg, "RESET TimeZone; RESET SESSION AUTHORIZATION; SELECT 1");
        assert_eq!(scalar(pg, state), "Asia/Tokyo other app app", "{version}");
        scalar(pg, "SET SESSION AUTHORIZATION postgres; SELECT 1");
        discard_all(pg);
        assert_eq!(scalar(pg, state), "Asia/Tokyo app app app", "{version}");
        // Back to the backend's own defaults.
        let back = [
            ("TimeZone".to_owned(), "GMT".to_owned()),
            ("application_name".to_owned(), String::new()),
            ("session_authorization".to_owned(), "postgres".to_owned()),
        ];
        assert_eq!(pg.set_connection_defaults(&back).unwrap(), Vec::<String>::new());
        assert_eq!(scalar(pg, state), "GMT  postgres postgres", "{version}");
        // A refused value is named, not raised, and the session goes on.
        let refused = pg.set_connection_defaults(&[("TimeZone".to_owned(), "Nowhere/Never".to_owned())]).unwrap();
        assert_eq!(refused, ["TimeZone"]);
        assert_eq!(scalar(pg, "SELECT current_setting('TimeZone')"), "GMT", "{version}");
    });
}
