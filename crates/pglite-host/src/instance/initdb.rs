//! A new cluster on PGlite 0.5+, where initdb is a program of its own (`initdb.wasm`).
//!
//! initdb runs `postgres --boot` and `postgres --single` (and asks `postgres -V`, `--check`)
//! through `popen` and `system`, which PGlite hands to its host. The host answers each with
//! `main` of a second PostgreSQL instance whose memory is put back to a snapshot first, as
//! PGlite's driver emulates a fork. The two exchange the bootstrap scripts and PostgreSQL's
//! output through files, `pgstdin` and `pgstdout` beside the installation: PostgreSQL's
//! standard streams are reopened on them once, and initdb opens them once, reading and writing
//! them as the pipes it thinks they are. Each program lives in a store of its own over the same
//! directories; the child's store sits in initdb's store data while initdb runs.

use wasmtime::{Caller, Func, Global, Memory, Store, TypedFunc, Val};

use super::link::{self, guest_string, typed};
use super::{Dirs, single};
use crate::Error;
use crate::imports::Ctx;
use crate::profile::Profile;

/// initdb's arguments, as PGlite's driver passes them (the bootstrap superuser is `postgres`).
const INITDB_ARGS: &[&str] = &[
    "--allow-group-access",
    "--encoding",
    "UTF8",
    "--locale=C.UTF-8",
    "--locale-provider=libc",
    "--auth=trust",
    "--username=postgres",
];

/// The PostgreSQL instance initdb runs as a child process.
pub(crate) struct Child {
    store: Store<Ctx>,
    main: TypedFunc<(i32, i32), i32>,
    memory: Memory,
    stack_pointer: Global,
    /// Memory and stack pointer as they were before the first `main`: restored before each.
    snapshot: Vec<u8>,
    sp: Val,
    program: String,
    /// initdb's ends of the two files: PostgreSQL's output read, its input written.
    from_child: i32,
    to_child: i32,
    /// A `popen(..., "w")` whose command runs at `pclose`, once its input is written.
    pending: Option<Vec<String>>,
    /// The exit code of the last command, for `pclose`.
    result: i32,
}

impl Child {
    /// Runs `main` of a fresh PostgreSQL with `args` (without the program's name).
    fn run(&mut self, args: &[String]) -> Result<i32, Error> {
        let memory = self.memory.data_mut(&mut self.store);
        memory[..self.snapshot.len()].copy_from_slice(&self.snapshot);
        self.stack_pointer.set(&mut self.store, self.sp).map_err(Error::instantiate)?;
        let mut argv = vec![self.program.as_str()];
        argv.extend(args.iter().map(String::as_str));
        let code = link::call_main(&mut self.store, self.main.clone(), &argv)?;
        tracing::debug!(command = %args.join(" "), code, "initdb ran postgres");
        Ok(code)
    }
}

/// The words of a shell command, up to its first redirection or operator (initdb's commands
/// redirect output to files PGlite ignores): single and double quotes and backslashes as the
/// shell reads them.
fn command_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = command.chars();
    while let Some(ch) = chars.next() {
        match ch {
            ' ' | '\t' | '\n' => words.extend(word.take()),
            '<' | '>' | '|' | '&' | ';' if word.is_none() => break,
            '\'' => {
                let word = word.get_or_insert_with(String::new);
                word.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                let word = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The arguments of the PostgreSQL command initdb asks for (its program's name dropped).
fn postgres_args(command: &str) -> Vec<String> {
    command_words(command).into_iter().skip(1).collect()
}

/// Runs `f` with initdb's child, taken out of the store data for the call.
fn with_child(c: &mut Caller<'_, Ctx>, f: impl FnOnce(&mut Child) -> Result<i32, Error>) -> wasmtime::Result<i32> {
    let mut child = c.data_mut().child.take().ok_or_else(|| wasmtime::Error::msg("initdb has no child"))?;
    let result = f(&mut child);
    c.data_mut().child = Some(child);
    result.map_err(wasmtime::Error::new)
}

/// Makes a new cluster in the empty directory `dirs.data` with `initdb` (the module of
/// `initdb.wasm`) and PostgreSQL's `pg_module`.
pub(crate) fn make_cluster(
    pg_module: &wasmtime::Module,
    initdb_module: &wasmtime::Module,
    profile: &'static Profile,
    dirs: &Dirs<'_>,
) -> Result<(), Error> {
    let program = single::postgres_program(profile);
    // The child: PostgreSQL with its callbacks in place, then the snapshot each run starts from.
    let environ = single::environ(profile, &program, "postgres");
    let mut store = link::new_store(pg_module.engine(), profile, dirs, false, environ)?;
    let (instance, linker, _) = link::instantiate(&mut store, pg_module, profile)?;
    link::register_symbols(&mut store, &instance, &linker, pg_module, profile.memory_base);
    link::runtime_exports(&mut store, &instance)?;
    typed::<(), ()>(&mut store, &instance, "__wasm_call_ctors")?.call(&mut store, ()).map_err(Error::guest)?;
    single::register_callbacks(&mut store, &instance, profile)?;
    let shared = store.data().shared();
    let snapshot = shared.memory.data(&store).to_vec();
    let sp = shared.stack_pointer.get(&mut store);
    // Its standard streams on the two files, for every run (the descriptors outlive the
    // snapshot's restores).
    let freopen = typed::<(i32, i32, i32), i32>(&mut store, &instance, "pgl_freopen")?;
    for (name, mode, fd) in [("pgstdin", "r", 0), ("pgstdout", "w", 1)] {
        let path = guest_string(&mut store, &format!("{}/{name}", profile.paths.prefix))?;
        let mode = guest_string(&mut store, mode)?;
        freopen.call(&mut store, (path, mode, fd)).map_err(Error::guest)?;
    }
    let main = typed(&mut store, &instance, "__main_argc_argv")?;

    let initdb_program = format!("{}/bin/initdb", profile.paths.prefix);
    let environ = single::environ(profile, &initdb_program, "postgres");
    let mut initdb = link::new_store(initdb_module.engine(), profile, dirs, false, environ)?;
    let (initdb_instance, _, _) = link::instantiate(&mut initdb, initdb_module, profile)?;
    link::runtime_exports(&mut initdb, &initdb_instance)?;
    typed::<(), ()>(&mut initdb, &initdb_instance, "__wasm_call_ctors")?.call(&mut initdb, ()).map_err(Error::guest)?;
    install_commands(&mut initdb, &initdb_instance)?;
    let fopen = typed::<(i32, i32), i32>(&mut initdb, &initdb_instance, "fopen")?;
    let mut open = |name: &str, mode: &str| -> Result<i32, Error> {
        let path = guest_string(&mut initdb, &format!("{}/{name}", profile.paths.prefix))?;
        let mode = guest_string(&mut initdb, mode)?;
        fopen.call(&mut initdb, (path, mode)).map_err(Error::guest)
    };
    let (from_child, to_child) = (open("pgstdout", "r")?, open("pgstdin", "w")?);
    initdb.data_mut().child = Some(Box::new(Child {
        store,
        main,
        memory: shared.memory,
        stack_pointer: shared.stack_pointer,
        snapshot,
        sp,
        program,
        from_child,
        to_child,
        pending: None,
        result: 0,
    }));

    let mut args = vec![initdb_program.as_str()];
    args.extend_from_slice(INITDB_ARGS);
    let initdb_main = typed(&mut initdb, &initdb_instance, "__main_argc_argv")?;
    let result = link::call_main(&mut initdb, initdb_main, &args);
    // Flush initdb's streams as its exit would.
    if let Ok(on_exit) = typed::<(), ()>(&mut initdb, &initdb_instance, "__funcs_on_exit")
        && let Err(err) = on_exit.call(&mut initdb, ())
    {
        tracing::debug!(%err, "initdb's exit handlers failed");
    }
    if let Some(mut child) = initdb.data_mut().child.take() {
        child.store.data_mut().vfs.close_all();
    }
    initdb.data_mut().vfs.close_all();
    match result? {
        0 => Ok(()),
        code => Err(Error::InitdbFailed { code }),
    }
}

/// Hands initdb the host functions that run its commands: `system` and `popen` of PostgreSQL
/// run the child's `main` (at once for a command initdb reads from, at `pclose` for one it
/// writes to); anything else fails.
fn install_commands(store: &mut Store<Ctx>, instance: &wasmtime::Instance) -> Result<(), Error> {
    let table = store.data().shared().table;
    let system = Func::wrap(&mut *store, |mut c: Caller<'_, Ctx>, cmd: i32| -> wasmtime::Result<i32> {
        let command = crate::imports::split(&mut c).0.cstr(cmd as u32).unwrap_or_default();
        with_child(&mut c, |child| child.run(&postgres_args(&command)))
    });
    let popen = Func::wrap(&mut *store, |mut c: Caller<'_, Ctx>, cmd: i32, mode: i32| -> wasmtime::Result<i32> {
        let (command, mode) = {
            let (g, _) = crate::imports::split(&mut c);
            (g.cstr(cmd as u32).unwrap_or_default(), g.cstr(mode as u32).unwrap_or_default())
        };
        let args = postgres_args(&command);
        with_child(&mut c, |child| {
            if mode.starts_with('r') {
                child.result = child.run(&args)?;
                Ok(child.from_child)
            } else {
                child.pending = Some(args);
                Ok(child.to_child)
            }
        })
    });
    let pclose_export = typed::<i32, i32>(store, instance, "pclose")?;
    let pclose = Func::wrap(&mut *store, move |mut c: Caller<'_, Ctx>, stream: i32| -> wasmtime::Result<i32> {
        let ours = c.data().child.as_ref().is_some_and(|child| stream == child.from_child || stream == child.to_child);
        if !ours {
            return pclose_export.call(&mut c, stream);
        }
        // initdb flushed what it wrote before closing: the command can read it now.
        let fflush = c.get_export("fflush").and_then(|e| e.into_func());
        if let Some(fflush) = fflush {
            fflush.typed::<i32, i32>(&c)?.call(&mut c, stream)?;
        }
        with_child(&mut c, |child| {
            if let Some(args) = child.pending.take() {
                child.result = child.run(&args)?;
            }
            Ok(child.result)
        })
    });
    for (setter, func) in [("pgl_set_system_fn", system), ("pgl_set_popen_fn", popen), ("pgl_set_pclose_fn", pclose)] {
        let index = single::add(store, table, func)?;
        typed::<i32, ()>(store, instance, setter)?.call(&mut *store, index).map_err(Error::guest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::command_words;

    #[test]
    fn commands_split_as_the_shell_would_up_to_a_redirection() {
        assert_eq!(
            command_words(r#""/pglite/bin/postgres" --boot -X 1048576 -c log_checkpoints=false > /dev/null 2>&1"#),
            ["/pglite/bin/postgres", "--boot", "-X", "1048576", "-c", "log_checkpoints=false"]
        );
        assert_eq!(command_words(r"'/a b/postgres' -V"), ["/a b/postgres", "-V"]);
        assert_eq!(command_words(r#"x "a\"b" c\ d"#), ["x", "a\"b", "c d"]);
        assert!(command_words("").is_empty());
    }
}
