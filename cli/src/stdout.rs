//! Writing a command's output to stdout (the `outln!` and `out!` macros): a closed pipe ends
//! kiln quietly with the status a shell gives a process killed by SIGPIPE, as `git` and
//! coreutils end, instead of a panic.

use std::io::Write;

/// 128 + SIGPIPE: what `$?` shows for a writer killed by a closed pipe.
const CLOSED_PIPE_STATUS: i32 = 141;

pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(CLOSED_PIPE_STATUS);
        }
        // Anything else (a full disk behind a redirect) is worth a word, once.
        eprintln!("kiln: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}
