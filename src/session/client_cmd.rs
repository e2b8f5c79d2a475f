//! Connection state that can live in redward does: the client's name, library info, id,
//! database and protocol. `CLIENT SETNAME/GETNAME/SETINFO/ID/INFO/LIST/KILL` are answered here
//! the way Redis answers them for a connection of its own (`clientCommand` in networking.c),
//! about redward's own clients (`clients.rs`); `SELECT` and `HELLO` on a shared connection move
//! the client to shared connections already in that database and protocol
//! ([`Outcome::Reattach`]), so none of them costs a connection of its own.
//!
//! What cannot be shared (MULTI, WATCH, blocking commands, subscriptions, CLIENT TRACKING,
//! NO-EVICT, NO-TOUCH, ...) still moves the client to its own connection (`route.rs`).

use super::*;

/// A bulk string in RESP2, a verbatim `txt` string in RESP3 (`addReplyVerbatim`).
fn verbatim(text: &str) -> acl_cmd::Reply {
    acl_cmd::Reply {
        resp2: format!("${}\r\n{text}\r\n", text.len()).into_bytes(),
        resp3: format!("={}\r\ntxt:{text}\r\n", text.len() + 4).into_bytes(),
    }
}

/// A `CLIENT LIST` filter (`TYPE`, `ID`), or `CLIENT KILL`'s (`ID`, `ADDR`, `LADDR`, `USER`,
/// `TYPE`, `SKIPME`, and `MAXAGE` where the server behind takes it).
#[derive(Default)]
struct Filter {
    ids: Vec<u64>,
    addr: Option<String>,
    laddr: Option<String>,
    user: Option<String>,
    /// `normal` or `pubsub`; `master`/`replica` match nobody (redward's clients are neither).
    kind: Option<String>,
    skipme: bool,
    /// Only clients connected for more than this many seconds.
    maxage: Option<u64>,
}

impl Filter {
    fn matches(&self, e: &crate::clients::Entry, me: u64, now: std::time::Instant) -> bool {
        if self.skipme && e.id == me {
            return false;
        }
        if self.maxage.is_some_and(|max| e.age(now) <= max) {
            return false;
        }
        if !self.ids.is_empty() && !self.ids.contains(&e.id) {
            return false;
        }
        if self.addr.as_ref().is_some_and(|a| *a != e.addr.to_string()) {
            return false;
        }
        if self
            .laddr
            .as_ref()
            .is_some_and(|a| Some(a.as_str()) != e.laddr.map(|l| l.to_string()).as_deref())
        {
            return false;
        }
        let info = e.info();
        if self.user.as_ref().is_some_and(|u| *u != info.user) {
            return false;
        }
        let pubsub = info.sub + info.psub + info.ssub > 0;
        match self.kind.as_deref() {
            Some("normal") => !pubsub,
            Some("pubsub") => pubsub,
            Some(_) => false,
            None => true,
        }
    }
}

/// The reply hook that puts `id` in HELLO's reply.
pub(super) fn hello_id(id: u64) -> Arc<dyn Rewrite> {
    Arc::new(HelloId(id))
}

/// Puts this client's id in HELLO's reply (`id` is the only field that describes the
/// connection rather than the server). The reply is small and its shape fixed
/// (`helloCommand` in networking.c): the `id` key is followed by an integer.
#[derive(Debug)]
struct HelloId(u64);

impl Rewrite for HelloId {
    fn rewrite(&self, reply: &[u8], info: &FrameInfo, out: &mut BytesMut) {
        const KEY: &[u8] = b"$2\r\nid\r\n:";
        let at = (!info.is_error())
            .then(|| reply.windows(KEY.len()).position(|w| w == KEY))
            .flatten();
        let Some(start) = at.map(|p| p + KEY.len()) else {
            out.extend_from_slice(reply);
            return;
        };
        let rest = reply.get(start..).unwrap_or(&[]);
        let end = rest
            .iter()
            .position(|&b| b == b'\r')
            .map_or(reply.len(), |e| start + e);
        out.extend_from_slice(reply.get(..start).unwrap_or(&[]));
        out.extend_from_slice(self.0.to_string().as_bytes());
        out.extend_from_slice(reply.get(end..).unwrap_or(&[]));
    }
}

/// The reply hook that shows redward's id where Redis's `CLIENT GETREDIR` or `CLIENT
/// TRACKINGINFO` reply names the redirection target, `None` for other requests.
pub(super) fn redirect_id(
    req: &Request<'_>,
    clients: &Arc<crate::clients::Clients>,
    redir: i64,
) -> Option<Arc<dyn Rewrite>> {
    let sub =
        (req.argc() == 2 && req.name().eq_ignore_ascii_case(b"client")).then(|| req.arg(1))?;
    let key: &'static [u8] = if sub.eq_ignore_ascii_case(b"getredir") {
        b":"
    } else if sub.eq_ignore_ascii_case(b"trackinginfo") {
        b"$8\r\nredirect\r\n:"
    } else {
        return None;
    };
    Some(Arc::new(RedirectId {
        key,
        clients: Arc::clone(clients),
        redir,
    }))
}

/// Redis names the redirection target by its own id, the target's own upstream connection
/// (`with_upstream_ids` made it so): shown as the redward client that connection is, or as
/// the one this client last redirected to when that client is gone (Redis keeps showing a
/// closed target's id too). 0 (no redirection) and -1 (not tracking) stay.
#[derive(Debug)]
struct RedirectId {
    /// What precedes the integer: `:` (the whole reply) or TRACKINGINFO's `redirect` key.
    key: &'static [u8],
    clients: Arc<crate::clients::Clients>,
    redir: i64,
}

impl Rewrite for RedirectId {
    fn rewrite(&self, reply: &[u8], info: &FrameInfo, out: &mut BytesMut) {
        let at = (!info.is_error())
            .then(|| reply.windows(self.key.len()).position(|w| w == self.key))
            .flatten();
        let Some(start) = at.map(|p| p + self.key.len()) else {
            out.extend_from_slice(reply);
            return;
        };
        let rest = reply.get(start..).unwrap_or(&[]);
        let end = start + rest.iter().position(|&b| b == b'\r').unwrap_or(rest.len());
        let upstream = std::str::from_utf8(reply.get(start..end).unwrap_or(&[]))
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|id| *id > 0);
        let Some(upstream) = upstream else {
            out.extend_from_slice(reply);
            return;
        };
        let ours = self
            .clients
            .all()
            .into_iter()
            .find(|e| e.upstream_id() == Some(upstream))
            .map_or(self.redir.max(0).unsigned_abs(), |e| e.id);
        out.extend_from_slice(reply.get(..start).unwrap_or(&[]));
        out.extend_from_slice(ours.to_string().as_bytes());
        out.extend_from_slice(reply.get(end..).unwrap_or(&[]));
    }
}

/// `CLIENT` and `ACL` subcommands redward answers itself, from its own registry and users.
/// Inside MULTI Redis would queue them and answer within EXEC's reply; forwarded there they
/// would act on Redis's clients, which are redward's own shared connections (`CLIENT KILL
/// USER default` would cut every client off), so they are refused instead, which dooms the
/// transaction to EXECABORT as any refused queued command does (`rejectCommand`).
const CLIENT_HERE: &[&[u8]] = &[
    b"id", b"getname", b"setname", b"setinfo", b"info", b"list", b"kill", b"reply",
];
const ACL_HERE: &[&[u8]] = &[
    b"whoami", b"users", b"list", b"getuser", b"cat", b"dryrun", b"log", b"setuser", b"deluser",
    b"load", b"save",
];

/// The refusal of a request that must not reach Redis as sent: one redward answers itself
/// (`AUTH`, `HELLO`, the `CLIENT` and `ACL` subcommands above), queued in MULTI. `None`: the
/// request takes its usual path.
pub(super) fn refused_in_multi(req: &Request<'_>) -> Option<Bytes> {
    let name = req.name();
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    let answered_here = |what: String| {
        Some(Bytes::from(format!(
            "-ERR redward answers {what} itself; send it outside MULTI\r\n"
        )))
    };
    if is(b"auth") || is(b"hello") {
        return answered_here(text(name).to_ascii_uppercase());
    }
    if req.argc() < 2 {
        return None;
    }
    let sub = req.arg(1);
    let among = |list: &[&[u8]]| list.iter().any(|s| sub.eq_ignore_ascii_case(s));
    let upper = || text(sub).to_ascii_uppercase();
    if is(b"acl") && among(ACL_HERE) {
        return answered_here(format!("ACL {}", upper()));
    }
    if is(b"client") && among(CLIENT_HERE) {
        return answered_here(format!("CLIENT {}", upper()));
    }
    None
}

/// An id no Redis connection has (Redis numbers them from 1 up, one at a time): what an id
/// that names none of redward's clients becomes, so Redis gives its own reply for a client
/// that does not exist.
const NO_SUCH_CLIENT: &[u8] = b"9223372036854775807";

/// `CLIENT UNBLOCK <id>` and `CLIENT TRACKING ... REDIRECT <id>` name a client by redward's
/// id; Redis would read it as one of its own connections (redward's shared ones among them:
/// an invalidation stream redirected to one would corrupt every client's replies on it).
/// Returns the arguments to send instead: each such id becomes Redis's id for the named
/// client's own upstream connection, or [`NO_SUCH_CLIENT`] when the client is not redward's
/// or has no connection of its own (a client on shared connections is neither blocked nor a
/// subscriber). `None`: nothing to translate (Redis's own errors for a malformed request
/// come from Redis). Options are read as `clientCommand` (networking.c) reads them.
pub(super) fn with_upstream_ids(
    req: &Request<'_>,
    clients: &crate::clients::Clients,
) -> Option<Vec<Vec<u8>>> {
    if req.argc() < 3 || !req.name().eq_ignore_ascii_case(b"client") {
        return None;
    }
    let sub = req.arg(1);
    let mut at = Vec::new();
    if sub.eq_ignore_ascii_case(b"unblock") && matches!(req.argc(), 3 | 4) {
        at.push(2);
    } else if sub.eq_ignore_ascii_case(b"tracking") {
        let mut j = 3;
        while j < req.argc() {
            let opt = req.arg(j);
            let more = j + 1 < req.argc();
            if opt.eq_ignore_ascii_case(b"redirect") && more {
                at.push(j + 1);
                j += 2;
            } else if opt.eq_ignore_ascii_case(b"prefix") && more {
                j += 2;
            } else {
                j += 1;
            }
        }
    }
    let mut args: Vec<Vec<u8>> = req.args().map(<[u8]>::to_vec).collect();
    let mut changed = false;
    for i in at {
        let Some(id) = crate::resp::request::string2ll(req.arg(i)) else {
            continue; // not an integer: Redis's own error, naming no connection
        };
        let upstream = u64::try_from(id)
            .ok()
            .and_then(|id| clients.get(id))
            .and_then(|e| e.upstream_id());
        if let Some(slot) = args.get_mut(i) {
            *slot =
                upstream.map_or_else(|| NO_SUCH_CLIENT.to_vec(), |u| u.to_string().into_bytes());
            changed = true;
        }
    }
    changed.then_some(args)
}

fn text(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

impl State {
    /// `CLIENT <sub>` answered by redward; `None`: not one of these (it goes to Redis).
    pub(super) fn client_command(&mut self, req: &Request<'_>) -> Option<Outcome> {
        if self.client.in_multi || req.argc() < 2 {
            // Inside MULTI Redis queues it; the transaction's own connection answers.
            return None;
        }
        if let Err(e) = commands::resolve(req) {
            // Redis's own texts for an unknown subcommand (CLIENT SETINFO before 7.2) or a
            // wrong argument count, without a connection of its own to say them.
            self.local(Bytes::from(e.reply(req)));
            return Some(Outcome::Done);
        }
        let sub = req.arg(1);
        let is = |s: &[u8]| sub.eq_ignore_ascii_case(s);
        let argc = req.argc();
        if is(b"id") && argc == 2 {
            self.local(Bytes::from(format!(":{}\r\n", self.client.id)));
        } else if is(b"getname") && argc == 2 {
            if self.client.name.is_empty() {
                self.local_proto(acl_cmd::Reply {
                    resp2: b"$-1\r\n".to_vec(),
                    resp3: b"_\r\n".to_vec(),
                });
            } else {
                let name = &self.client.name;
                let reply = format!("${}\r\n{}\r\n", name.len(), text(name));
                self.local(Bytes::from(reply));
            }
        } else if is(b"setname") && argc == 3 {
            if auth::valid_client_name(req.arg(2)) {
                self.client.name = req.arg(2).to_vec();
                self.client.changed = true;
                self.local(Bytes::from_static(replies::OK));
            } else {
                self.local(Bytes::from_static(replies::BAD_CLIENT_NAME));
            }
        } else if is(b"setinfo") && argc == 4 {
            // Only a server that knows SETINFO (Redis 7.2+, Valkey) gets here: for an older
            // one the command table has no `client|setinfo`, and the request was refused with
            // its `unknown subcommand` text already.
            let (attr, value) = (req.arg(2), req.arg(3));
            let slot = if attr.eq_ignore_ascii_case(b"lib-name") {
                &mut self.client.lib_name
            } else if attr.eq_ignore_ascii_case(b"lib-ver") {
                &mut self.client.lib_ver
            } else {
                let reply = format!("-ERR Unrecognized option '{}'\r\n", text(attr));
                self.local(Bytes::from(reply));
                return Some(Outcome::Done);
            };
            if !auth::valid_client_name(value) {
                let reply = format!(
                    "-ERR {} cannot contain spaces, newlines or special characters.\r\n",
                    text(attr)
                );
                self.local(Bytes::from(reply));
                return Some(Outcome::Done);
            }
            *slot = value.to_vec();
            self.client.changed = true;
            self.local(Bytes::from_static(replies::OK));
        } else if is(b"info") && argc == 2 {
            self.publish();
            let line = self
                .registration
                .entry
                .line(Instant::now().into_std(), self.with_lib());
            self.local_proto(verbatim(&format!("{line}\n")));
        } else if is(b"list") {
            self.publish();
            let filter = match self.filter(req, 2, false) {
                Ok(f) => f,
                Err(reply) => {
                    self.local(Bytes::from(reply));
                    return Some(Outcome::Done);
                }
            };
            let now = Instant::now().into_std();
            let me = self.client.id;
            let with_lib = self.with_lib();
            let mut out = String::new();
            for e in self.shared.clients.all() {
                if filter.matches(&e, me, now) {
                    out.push_str(&e.line(now, with_lib));
                    out.push('\n');
                }
            }
            self.local_proto(verbatim(&out));
        } else if is(b"kill") && argc >= 3 {
            self.client_kill(req);
        } else {
            return None;
        }
        Some(Outcome::Done)
    }

    /// Whether `CLIENT LIST`/`INFO` lines carry `lib-name`/`lib-ver`: when the server behind
    /// has `CLIENT SETINFO` (its lines have them then).
    fn with_lib(&self) -> bool {
        commands::resolve(&[&b"client"[..], b"setinfo", b"lib-name", b"x"][..]).is_ok()
    }

    /// `CLIENT KILL ip:port` (reply `+OK` or `No such client`) or `CLIENT KILL <filter> ...`
    /// (reply the count; `SKIPME yes` by default), on redward's clients.
    fn client_kill(&mut self, req: &Request<'_>) {
        let old_form = req.argc() == 3;
        let filter = if old_form {
            Filter {
                addr: Some(text(req.arg(2))),
                ..Filter::default()
            }
        } else {
            match self.filter(req, 2, true) {
                Ok(f) => f,
                Err(reply) => {
                    self.local(Bytes::from(reply));
                    return;
                }
            }
        };
        let me = self.client.id;
        let now = Instant::now().into_std();
        let mut killed = 0u64;
        for e in self.shared.clients.all() {
            if filter.matches(&e, me, now) {
                e.kill.cancel();
                killed += 1;
            }
        }
        if old_form {
            if killed == 0 {
                self.local(Bytes::from_static(b"-ERR No such client\r\n"));
            } else {
                self.local(Bytes::from_static(replies::OK));
            }
        } else {
            self.local(Bytes::from(format!(":{killed}\r\n")));
        }
    }

    /// Parses `<option> <value>` pairs from argument `from` on, with Redis's errors.
    fn filter(&self, req: &Request<'_>, from: usize, kill: bool) -> Result<Filter, String> {
        let mut f = Filter {
            skipme: kill,
            ..Filter::default()
        };
        let mut i = from;
        while i < req.argc() {
            let opt = req.arg(i);
            let is = |s: &[u8]| opt.eq_ignore_ascii_case(s);
            if !kill && is(b"id") {
                // CLIENT LIST ID id [id ...]: the rest are ids.
                for arg in (i + 1..req.argc()).map(|j| req.arg(j)) {
                    match crate::resp::request::string2ll(arg) {
                        Some(id) if id > 0 => f.ids.push(id.unsigned_abs()),
                        _ => return Err("-ERR Invalid client ID\r\n".to_owned()),
                    }
                }
                if f.ids.is_empty() {
                    return Err(String::from_utf8_lossy(replies::SYNTAX).into_owned());
                }
                return Ok(f);
            }
            let Some(value) = (i + 1 < req.argc()).then(|| req.arg(i + 1)) else {
                return Err(String::from_utf8_lossy(replies::SYNTAX).into_owned());
            };
            if is(b"type") {
                let kind = text(value).to_ascii_lowercase();
                let kind = if kind == "slave" {
                    "replica".into()
                } else {
                    kind
                };
                if !matches!(kind.as_str(), "normal" | "pubsub" | "master" | "replica") {
                    return Err(format!("-ERR Unknown client type '{}'\r\n", text(value)));
                }
                f.kind = Some(kind);
            } else if kill && is(b"id") {
                match crate::resp::request::string2ll(value) {
                    Some(id) if id > 0 => f.ids.push(id.unsigned_abs()),
                    _ => return Err("-ERR client-id should be greater than 0\r\n".to_owned()),
                }
            } else if kill && is(b"addr") {
                f.addr = Some(text(value));
            } else if kill && is(b"laddr") {
                f.laddr = Some(text(value));
            } else if kill && is(b"user") {
                if self.live.users.get(value).is_none() {
                    return Err(format!("-ERR No such user '{}'\r\n", text(value)));
                }
                f.user = Some(text(value));
            } else if kill && is(b"maxage") && commands::catalog::server().client_kill_maxage() {
                // Redis 7.4's and Valkey 8's texts (`clientKillCommand`).
                match crate::resp::request::string2ll(value) {
                    Some(age) if age > 0 => f.maxage = Some(age.unsigned_abs()),
                    Some(_) => return Err("-ERR maxage should be greater than 0\r\n".to_owned()),
                    None => {
                        return Err("-ERR maxage is not an integer or out of range\r\n".to_owned())
                    }
                }
            } else if kill && is(b"skipme") {
                if value.eq_ignore_ascii_case(b"yes") {
                    f.skipme = true;
                } else if value.eq_ignore_ascii_case(b"no") {
                    f.skipme = false;
                } else {
                    return Err(String::from_utf8_lossy(replies::SYNTAX).into_owned());
                }
            } else {
                return Err(String::from_utf8_lossy(replies::SYNTAX).into_owned());
            }
            i += 2;
        }
        Ok(f)
    }

    /// `SELECT db` on a shared connection: to shared connections already in that database
    /// (Redis's `selectDb` checks first: an integer, then the range), then forwarded there so
    /// Redis gives its own reply. `None`: the client's own connection takes it.
    pub(super) fn select_shared(&mut self, req: &Request<'_>, raw: &[u8]) -> Option<Outcome> {
        if req.argc() != 2 {
            return None;
        }
        let databases = self.shared.databases();
        if databases == 0 {
            return None; // not learned: Redis checks it on a connection of the client's own
        }
        let Some(db) = crate::resp::request::string2ll(req.arg(1)) else {
            self.local(Bytes::from_static(
                b"-ERR value is not an integer or out of range\r\n",
            ));
            return Some(Outcome::Done);
        };
        let Some(db) = u32::try_from(db).ok().filter(|d| *d < databases) else {
            self.local(Bytes::from_static(b"-ERR DB index is out of range\r\n"));
            return Some(Outcome::Done);
        };
        if db != self.client.setup.db {
            return Some(Outcome::Reattach(Setup {
                db,
                ..self.client.setup
            }));
        }
        self.client.db = db;
        self.client.changed = true;
        // Already in that database: Redis's own reply, from a shared connection in it.
        Some(self.forward_to(ConnKind::Shared, req, raw))
    }

    /// HELLO on a shared connection: to shared connections in the protocol asked for, then
    /// `HELLO [protover]` there (AUTH was checked by redward, SETNAME is kept here), with the
    /// reply's `id` made this client's. Redis's reply is otherwise its own (server, version,
    /// mode, role, modules).
    pub(super) fn hello_shared(
        &mut self,
        version: Option<&[u8]>,
        setname: Option<&[u8]>,
        login: Option<LoggedIn>,
    ) -> Outcome {
        let resp3 = version.map_or(self.client.setup.resp3, |v| v == b"3");
        if resp3 != self.client.setup.resp3 {
            return Outcome::Reattach(Setup {
                resp3,
                ..self.client.setup
            });
        }
        if let Some(proof) = login {
            self.log_in(proof, "HELLO");
        }
        if let Some(name) = setname {
            self.client.name = name.to_vec();
        }
        self.client.changed = true;
        let mut hello = Vec::with_capacity(24);
        let args: Vec<&[u8]> = std::iter::once(&b"HELLO"[..]).chain(version).collect();
        encode_command(&mut hello, args.into_iter());
        self.out.uout.extend_from_slice(&hello);
        self.out.shared_unsent += 1;
        self.counts.forwarded += 1;
        let forward = !self.suppressed();
        let sent = self.now();
        self.slots.push(Slot::Upstream {
            expect: Expect::Replies(1),
            forward,
            hook: Hook::Hello,
            sent,
            rewrite: Some(hello_id(self.client.id)),
        });
        Outcome::Done
    }

    /// Tells the registry what changed: the last command and when, and the client's state
    /// (flags, MULTI, buffers), every time (copies, no allocation); name, user, database and
    /// the rest when they changed.
    pub(super) fn publish(&mut self) {
        let now = self.now().into_std();
        let c = &mut self.client;
        let scalars = |i: &mut crate::clients::Info, c: &super::state::ClientState| {
            i.cmd = c.last_cmd;
            i.last = now;
            i.multi = if c.in_multi {
                i64::try_from(c.multi_queued).unwrap_or(i64::MAX)
            } else {
                -1
            };
            i.monitor = c.monitor;
            i.flags = crate::clients::Flags {
                blocked: c.blocking > 0,
                ..c.flags
            };
            i.redir = c.redir;
            (i.qbuf, i.omem, i.mem) = c.buffers;
            (i.sub, i.psub, i.ssub) = c.subs.counts();
        };
        if !std::mem::take(&mut c.changed) {
            let c = &*c;
            self.registration.entry.publish(|i| scalars(i, c));
            return;
        }
        let user = self
            .login
            .as_ref()
            .map_or_else(String::new, |l| l.user().name.clone());
        let mut info = crate::clients::Info {
            name: c.name.clone(),
            user,
            db: c.db,
            resp: if c.resp3 { 3 } else { 2 },
            lib_name: c.lib_name.clone(),
            lib_ver: c.lib_ver.clone(),
            ..crate::clients::Info::default()
        };
        scalars(&mut info, c);
        self.registration.entry.publish(|i| *i = info);
    }
}
