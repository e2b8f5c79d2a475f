//! Reply texts redward writes itself. Each is the exact line redis-server 7.0 writes in the same
//! situation (source named on each); `tests/transparency.rs` compares them with a real server.

/// `shared.ok`.
pub const OK: &[u8] = b"+OK\r\n";
/// `resetCommand` (`networking.c`).
pub const RESET: &[u8] = b"+RESET\r\n";
/// `shared.noautherr` (`server.c`).
pub const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
/// `authCommand` and `helloCommand`.
pub const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
/// `helloCommand`, when the client is not authenticated and gave no AUTH option (7.0 wording).
pub const HELLO_NOAUTH: &[u8] = b"-NOAUTH HELLO must be called with the client already \
authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the \
client and select the RESP protocol version at the same time\r\n";
/// `helloCommand`: protocol version other than 2 or 3.
pub const NOPROTO: &[u8] = b"-NOPROTO unsupported protocol version\r\n";
/// `helloCommand`: `getLongLongFromObjectOrReply` on the version.
pub const HELLO_BAD_VERSION: &[u8] = b"-ERR Protocol version is not an integer or out of range\r\n";
/// `shared.execaborterr`: EXEC after a command of the transaction was refused.
pub const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
/// `processCommand`: DEBUG with `enable-debug-command no` (the default).
pub const DEBUG_NOT_ALLOWED: &[u8] =
    b"-ERR DEBUG command not allowed. If the enable-debug-command \
option is set to \"local\", you can run it from a local connection, otherwise you need to set \
this option in the configuration file, and then restart the server.\r\n";
/// `processCommand`: MODULE with `enable-module-command no` (the default).
pub const MODULE_NOT_ALLOWED: &[u8] =
    b"-ERR MODULE command not allowed. If the enable-module-command \
option is set to \"local\", you can run it from a local connection, otherwise you need to set \
this option in the configuration file, and then restart the server.\r\n";
/// `shared.syntaxerr`.
pub const SYNTAX: &[u8] = b"-ERR syntax error\r\n";
/// `authCommand`, two-argument form while `default` has `nopass`.
pub const AUTH_NOPASS_DEFAULT: &[u8] = b"-ERR AUTH <password> called without any password \
configured for the default user. Are you sure your configuration is correct?\r\n";
/// `clientSetNameOrReply` (`networking.c`).
pub const BAD_CLIENT_NAME: &[u8] =
    b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n";

/// redward's own: this address failed to log in too often and is locked out for a while.
pub const AUTH_LOCKED: &[u8] = b"-ERR too many failed authentication attempts, try again later\r\n";
/// redward's own: the user's `commands_per_second` is exhausted; the command was not sent.
pub const COMMAND_RATE_EXCEEDED: &[u8] =
    b"-ERR command rate limit exceeded for this user, try again later\r\n";

/// redward's own: the upstream Redis could not be reached or refused redward's credentials.
/// The client may retry; nothing of the request was sent.
pub const UPSTREAM_UNAVAILABLE: &[u8] = b"-ERR upstream Redis unavailable, try again later\r\n";
/// redward's own: the upstream connection broke while this request was in flight.
pub const UPSTREAM_LOST: &[u8] = b"-ERR upstream Redis connection lost\r\n";

/// `-ERR Syntax error in HELLO option '<opt>'` (`helloCommand`, `addReplyErrorFormat`, which
/// turns CR and LF into spaces and stops `%s` at a NUL byte).
pub fn hello_syntax(opt: &[u8]) -> Vec<u8> {
    let mut out = b"-ERR Syntax error in HELLO option '".to_vec();
    push_c_string(&mut out, opt, usize::MAX);
    out.extend_from_slice(b"'\r\n");
    out
}

/// Appends `s` as C's `%.*s` would print it (stopping at NUL, at most `max` bytes), with CR and
/// LF replaced by spaces as `addReplyErrorFormat` does.
pub fn push_c_string(out: &mut Vec<u8>, s: &[u8], max: usize) {
    for &b in s.iter().take(max) {
        match b {
            0 => break,
            b'\r' | b'\n' => out.push(b' '),
            other => out.push(other),
        }
    }
}

/// `upstream.identity: per_user`, and the client's user has no upstream user (a reload
/// removed it while a request was on its way): never sent as redward's own user instead.
pub const IDENTITY_GONE: &[u8] =
    b"-ERR redward: this user is gone from redward's configuration; log in again\r\n";

/// `upstream.identity: shared`, and a script or function from a user narrower than
/// `+@all ~* &*`: it would run as redward's own upstream user, so it is refused.
pub const SCRIPTS_NEED_PER_USER: &[u8] = b"-NOPERM this user may not run scripts or functions: redward's upstream.identity is shared, so they would run with redward's own rights (set upstream.identity: per_user)\r\n";

/// `AUTH default <anything>`: back to Redis's `default` user on a connection redward opened
/// without a credential (so `default` is `nopass` there, and any password is accepted).
pub const AUTH_DEFAULT_NOPASS: &[u8] = b"*3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$7\r\nredward\r\n";

/// `CONFIG SET requirepass` while redward logs in to Redis as `default`: refused, or every
/// later upstream connection would fail.
pub const OWN_CREDENTIAL: &[u8] = b"-ERR redward: requirepass is the password redward logs in to Redis with; change it in Redis's configuration and in redward's upstream settings together\r\n";
