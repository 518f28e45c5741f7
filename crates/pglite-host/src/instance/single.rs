//! PGlite 0.5+: the backend started as PostgreSQL's single-user mode by `main` and driven one
//! message at a time. `main --single ...` sets the backend up and ends in `exit(99)` (alive);
//! `pgl_startPGlite` makes it ready. Each request then goes in through the read callback while
//! the host calls `PostgresMainLoopOnce` until it is consumed; an ERROR longjmps out as
//! `exit(100)`, which `PostgresMainLongJmp` finishes (error sent, transaction aborted), and
//! the exchange ends with `PostgresSendReadyForQueryIfNecessary` and a flush. This is what
//! PGlite's own driver does (`execProtocolRawSync`). Also the host functions PostgreSQL calls
//! for `system` and `popen`, which the guest cannot run.

use wasmtime::{Caller, Func, Ref, Store, Table, TypedFunc};

use super::ExecError;
use super::frames::frame_len;
use super::link::{self, typed};
use crate::Error;
use crate::imports::{self, Ctx, GuestExit};
use crate::profile::Profile;

/// `main`'s exit code once the single-user backend is set up and waiting for input.
const EXIT_ALIVE: i32 = 99;
/// The exit code with which an ERROR unwinds out of `PostgresMainLoopOnce`.
const EXIT_LONGJMP: i32 = 100;

/// PGlite's start parameters (its driver's `defaultStartParams`): a single-user backend with
/// no parallel workers and synchronous I/O (`io_method=sync`, without which scans hang). All
/// but `-F` (fsync off): here a commit that returned is on disk, as on the older lines, whose
/// built-in options turned fsync back on.
const START_PARAMS: &[&str] = &[
    "--single",
    "-O",
    "-j",
    "-c",
    "search_path=public",
    "-c",
    "exit_on_error=false",
    "-c",
    "log_checkpoints=false",
    "-c",
    "max_worker_processes=0",
    "-c",
    "max_parallel_workers=0",
    "-c",
    "max_parallel_workers_per_gather=0",
    "-c",
    "io_method=sync",
    "-c",
    "max_parallel_maintenance_workers=0",
];

/// The exports one exchange goes through.
#[derive(Clone)]
pub(super) struct MainLoop {
    loop_once: TypedFunc<(), ()>,
    long_jmp: TypedFunc<(), ()>,
    ready_for_query: TypedFunc<(), ()>,
    flush: TypedFunc<(), ()>,
    remaining: TypedFunc<(), i32>,
}

/// How the backend is stopped: no longer active, then its exit handlers (the shutdown
/// checkpoint among them).
#[derive(Clone)]
pub(super) struct Stop {
    set_active: TypedFunc<i32, i32>,
    run_atexit: TypedFunc<(), ()>,
}

/// The environment PGlite's driver gives PostgreSQL and initdb (`database` for `PGDATABASE`).
pub(super) fn environ(profile: &Profile, program: &str, database: &str) -> Vec<String> {
    let paths = profile.paths;
    [
        ("HOME", paths.home),
        ("USER", "postgres"),
        ("LOGNAME", "postgres"),
        ("PATH", "/"),
        ("PWD", "/"),
        ("PGDATA", paths.data),
        ("PGUSER", "postgres"),
        ("PGDATABASE", database),
        ("LANG", "en_US.UTF-8"),
        ("LC_COLLATE", "en_US.UTF-8"),
        ("LC_CTYPE", "en_US.UTF-8"),
        ("TZ", "UTC"),
        ("PGTZ", "UTC"),
        ("PGCLIENTENCODING", "UTF8"),
        ("ICU_DATA", &format!("{}/icu", paths.prefix)),
        ("_", program),
    ]
    .iter()
    .map(|(name, value)| format!("{name}={value}"))
    .collect()
}

/// The path of the PostgreSQL executable in the guest (its `argv[0]`).
pub(super) fn postgres_program(profile: &Profile) -> String {
    format!("{}/bin/postgres", profile.paths.prefix)
}

/// Puts host functions in the table and hands them to PostgreSQL: the wire callbacks
/// (`pgl_set_rw_cbs`), `system` (refused: there are no programs to run) and `popen`/`pclose`,
/// of which only `locale -a` (initdb's question, answered from the file the package ships) is
/// served, as PGlite's driver does.
pub(super) fn register_callbacks(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    profile: &Profile,
) -> Result<(), Error> {
    let table = store.data().shared().table;
    let (read, write) = super::boot::wire_callbacks(store);
    let (read, write) = (add(store, table, read)?, add(store, table, write)?);
    typed::<(i32, i32), ()>(store, instance, "pgl_set_rw_cbs")?
        .call(&mut *store, (read, write))
        .map_err(Error::guest)?;

    let system = Func::wrap(&mut *store, |mut c: Caller<'_, Ctx>, cmd: i32| -> i32 {
        let (g, _) = imports::split(&mut c);
        tracing::debug!(command = %g.cstr(cmd as u32).unwrap_or_default(), "system() refused");
        1
    });
    let locale_file = format!("{}/locale-a", profile.paths.prefix);
    let fopen = typed::<(i32, i32), i32>(store, instance, "fopen")?;
    let fclose = typed::<i32, i32>(store, instance, "fclose")?;
    let popen = Func::wrap(&mut *store, move |mut c: Caller<'_, Ctx>, cmd: i32, mode: i32| -> wasmtime::Result<i32> {
        let (command, mode) = {
            let (g, _) = imports::split(&mut c);
            (g.cstr(cmd as u32).unwrap_or_default(), g.cstr(mode as u32).unwrap_or_default())
        };
        if !(command.starts_with("locale -a") && mode == "r") {
            tracing::debug!(%command, "popen() refused");
            return Ok(0);
        }
        let malloc = c.data().exports().malloc;
        let path = malloc.call(&mut c, locale_file.len() as i32 + 1)?;
        let read_mode = malloc.call(&mut c, 2)?;
        let memory = c.data().shared().memory;
        memory.write(&mut c, path as usize, format!("{locale_file}\0").as_bytes())?;
        memory.write(&mut c, read_mode as usize, b"r\0")?;
        fopen.call(&mut c, (path, read_mode))
    });
    let pclose = Func::wrap(&mut *store, move |mut c: Caller<'_, Ctx>, stream: i32| -> wasmtime::Result<i32> {
        fclose.call(&mut c, stream)
    });
    for (setter, func) in [("pgl_set_system_fn", system), ("pgl_set_popen_fn", popen), ("pgl_set_pclose_fn", pclose)] {
        let index = add(store, table, func)?;
        typed::<i32, ()>(store, instance, setter)?.call(&mut *store, index).map_err(Error::guest)?;
    }
    Ok(())
}

/// Puts `func` in a new slot of `table` and returns its index.
pub(super) fn add(store: &mut Store<Ctx>, table: Table, func: Func) -> Result<i32, Error> {
    Ok(table.grow(&mut *store, 1, Ref::Func(Some(func))).map_err(Error::instantiate)? as i32)
}

/// Starts the single-user backend on the existing cluster, serving `database`.
pub(super) fn start_backend(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    profile: &Profile,
    database: &str,
) -> Result<(MainLoop, Stop), Error> {
    register_callbacks(store, instance, profile)?;
    let stop = Stop {
        set_active: typed(store, instance, "pgl_setPGliteActive")?,
        run_atexit: typed(store, instance, "pgl_run_atexit_funcs")?,
    };
    stop.set_active.call(&mut *store, 1).map_err(Error::guest)?;
    let program = postgres_program(profile);
    let mut args = vec![program.as_str()];
    args.extend_from_slice(START_PARAMS);
    args.extend_from_slice(&["-D", profile.paths.data, database]);
    let main = typed(store, instance, "__main_argc_argv")?;
    let code = link::call_main(store, main, &args)?;
    if code != EXIT_ALIVE {
        return Err(Error::BackendStart { code });
    }
    typed::<(), ()>(store, instance, "pgl_startPGlite")?.call(&mut *store, ()).map_err(Error::guest)?;
    let main_loop = MainLoop {
        loop_once: typed(store, instance, "PostgresMainLoopOnce")?,
        long_jmp: typed(store, instance, "PostgresMainLongJmp")?,
        ready_for_query: typed(store, instance, "PostgresSendReadyForQueryIfNecessary")?,
        flush: typed(store, instance, "pgl_pq_flush")?,
        remaining: typed(store, instance, "pq_buffer_remaining_data")?,
    };
    store.data_mut().wait_flush = Some(main_loop.flush.clone());
    Ok((main_loop, stop))
}

/// How many turns of the loop may pass without consuming input before the backend is taken
/// for stuck (each turn normally takes at least one message).
const MAX_IDLE_TURNS: u32 = 64;

/// One exchange: the request through the read callback, PostgreSQL's loop until it is
/// consumed, and what the write callback received. A Terminate ends the request: what follows
/// it is not read (nor is the Terminate: the client is leaving, the backend stays).
pub(super) fn exchange(store: &mut Store<Ctx>, main_loop: &MainLoop, request: &[u8]) -> Result<Vec<u8>, ExecError> {
    let dead = |e: wasmtime::Error| ExecError::Dead(Error::guest(e));
    let mut end = 0;
    while let Some(len) = frame_len(&request[end..]) {
        if request[end] == b'X' {
            break;
        }
        end += len;
    }
    // Bytes that do not frame stay, for PostgreSQL to reject.
    let request = if frame_len(&request[end..]).is_some() { &request[..end] } else { request };
    store.data_mut().set_input(request);
    let stack_pointer = store.data().shared().stack_pointer;
    let mut result = Ok(());
    let mut idle = 0;
    while result.is_ok() {
        let buffered = match main_loop.remaining.call(&mut *store, ()) {
            Ok(n) => n > 0,
            Err(err) => {
                result = Err(dead(err));
                break;
            }
        };
        // A streamed request's next piece is waited for here, between messages, once
        // PostgreSQL has read what it was given.
        if !buffered {
            if let Err(err) = crate::stream::flush_before_wait(&mut *store) {
                result = Err(dead(err));
                break;
            }
            if !store.data_mut().input_left() {
                break;
            }
        }
        let before = store.data().wire_taken();
        let sp = stack_pointer.get(&mut *store);
        let context = crate::interrupts::error_context(&mut *store);
        result = match main_loop.loop_once.call(&mut *store, ()) {
            Ok(()) => Ok(()),
            Err(err) => finish_error(store, main_loop, err, sp, context).map_err(dead),
        };
        idle = if store.data().wire_taken() == before && !buffered { idle + 1 } else { 0 };
        if idle > MAX_IDLE_TURNS {
            result = Err(ExecError::Dead(Error::instantiate("the backend stopped reading its input")));
        }
    }
    if result.is_ok() {
        result = main_loop
            .ready_for_query
            .call(&mut *store, ())
            .and_then(|()| main_loop.flush.call(&mut *store, ()))
            .map_err(dead);
    }
    let reply = store.data_mut().take_output();
    result?;
    Ok(reply)
}

/// Finishes what unwound out of one turn of the loop: an ERROR (`exit(100)`) with
/// `PostgresMainLongJmp`, the C stack pointer put back to `sp`. A wasm stack overflow with no
/// `setjmp` site on the way up (a plain statement: the loop's own error handling is that
/// `exit`) first becomes PostgreSQL's `54001`, as at an `invoke_*` (see
/// `interrupts::StackGuard`), with `error_context_stack` put back to `context`. Anything else
/// is returned: the instance is dead.
fn finish_error(
    store: &mut Store<Ctx>,
    main_loop: &MainLoop,
    err: wasmtime::Error,
    sp: wasmtime::Val,
    context: Option<u32>,
) -> wasmtime::Result<()> {
    let err = match context {
        Some(context) => crate::interrupts::stack_overflow_to_error(&mut *store, err, sp, context),
        None => err,
    };
    if !matches!(err.downcast_ref::<GuestExit>(), Some(GuestExit(EXIT_LONGJMP))) {
        return Err(err);
    }
    store.data().shared().stack_pointer.set(&mut *store, sp)?;
    main_loop.long_jmp.call(&mut *store, ())
}

/// Stops the backend: no longer active, then its exit handlers run (the shutdown checkpoint);
/// they may end in `exit(0)`.
pub(super) fn stop(store: &mut Store<Ctx>, stop: &Stop) -> Result<(), Error> {
    stop.set_active.call(&mut *store, 0).map_err(Error::guest)?;
    match stop.run_atexit.call(&mut *store, ()) {
        Ok(()) => Ok(()),
        Err(err) if matches!(err.downcast_ref::<GuestExit>(), Some(GuestExit(0))) => Ok(()),
        Err(err) => Err(Error::guest(err)),
    }
}
