//! What a throwaway server needs from the machine: a private directory and
//! a free port. Shared by the PostgreSQL cluster and PgBouncer helpers.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Creates a new directory `<temp>/<prefix>-<pid>-<n>-<nanos>`, readable by
/// its owner only (it may hold passwords), owned by `owner` (uid, gid) when
/// given. On failure: what was being done, and the error.
pub(crate) fn private_dir(
    prefix: &str,
    owner: Option<(u32, u32)>,
) -> Result<PathBuf, (String, io::Error)> {
    use std::os::unix::fs::PermissionsExt;
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let failed = |context: &str| {
        let context = format!("{context} {}", dir.display());
        move |source| (context, source)
    };
    std::fs::create_dir(&dir).map_err(failed("creating"))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(failed("chmod"))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(failed("chown"))?;
    }
    Ok(dir)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (a server started on
/// it may still lose a race for it, and should retry with another).
pub(crate) fn free_port() -> io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
}
