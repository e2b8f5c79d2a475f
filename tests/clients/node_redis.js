// node-redis (the `redis` package on npm) against one server (redward over TLS, or redis-server
// directly), each client with node-redis's default handshake, sent as one pipeline:
//   RESP2 (the default): AUTH, CLIENT SETNAME (when named), SELECT (db != 0),
//                        CLIENT SETINFO LIB-VER and LIB-NAME
//   RESP3 (RESP: 3):     HELLO 3 AUTH ... SETNAME ..., SELECT, CLIENT SETINFO x2,
//                        CLIENT MAINT_NOTIFICATIONS ON ...
// Prints a transcript, one check a line, that tests/clients.rs compares between redward and
// Redis; exits 1 at the first check whose result is not what Redis gives, naming it.
//
//   node node_redis.js --port P --user U --password W --protocol 2|3 [--tls-ca CA]
"use strict";

const fs = require("fs");
const util = require("util");
const { createClient } = require("redis");

const TIMEOUT_MS = 10000; // for every connect and every wait

function parseArgs(argv) {
  const out = { host: "127.0.0.1" };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    out[key] = argv[i + 1];
  }
  for (const k of ["port", "user", "password", "protocol"]) {
    if (out[k] === undefined) throw new Error(`--${k} is required`);
  }
  return out;
}

class CheckFailed extends Error {}

function fmt(value) {
  return value === undefined ? "undefined" : JSON.stringify(value);
}

function show(name, value) {
  console.log(`${name}: ${fmt(value)}`);
}

function check(name, got, want) {
  show(name, got);
  if (!util.isDeepStrictEqual(got, want)) {
    throw new CheckFailed(`${name}: got ${fmt(got)}, want ${fmt(want)}`);
  }
}

// What the promise rejects with, as `Type: message`, or what it resolves to.
async function errorText(promise) {
  try {
    return await promise;
  } catch (e) {
    return `${e.constructor.name}: ${e.message}`;
  }
}

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckFailed(`timed out waiting for ${what}`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const protocol = Number(args.protocol);
  const errors = [];

  async function connect(extra = {}) {
    const options = {
      socket: {
        host: args.host,
        port: Number(args.port),
        connectTimeout: TIMEOUT_MS,
        reconnectStrategy: false,
      },
      username: args.user,
      password: args.password,
      ...extra,
    };
    if (protocol === 3) options.RESP = 3; // RESP2 is node-redis's default: no HELLO at all
    if (args.tlsCa) {
      options.socket.tls = true;
      options.socket.ca = fs.readFileSync(args.tlsCa);
      options.socket.servername = "localhost";
    }
    const client = createClient(options);
    client.on("error", (e) => errors.push(`${extra.name || "client"}: ${e.message}`));
    await within(client.connect(), "connect");
    return client;
  }

  show("library", `node-redis ${require("redis/package.json").version} protocol=${protocol}`);

  // The default handshake, with a name.
  const c = await connect({ name: "node-main" });
  check("ping", await c.ping(), "PONG");
  check("client getname (from handshake)", await c.clientGetName(), "node-main");
  check("client setname", await c.clientSetName("node-renamed"), "OK");
  check("client getname", await c.clientGetName(), "node-renamed");
  // Redis 7.2+ accepts these; 7.0 answers an error. Either way the same as Redis.
  show("client setinfo lib-name",
    await errorText(c.sendCommand(["CLIENT", "SETINFO", "LIB-NAME", "redward-test"])));
  show("client setinfo lib-ver",
    await errorText(c.sendCommand(["CLIENT", "SETINFO", "LIB-VER", "1.2.3"])));
  // The protocol replies really come in: Lua's double and map are RESP3 types, which Redis
  // writes as a bulk string and a flat array to a RESP2 connection.
  const resp3 = protocol === 3;
  check("eval double", await c.sendCommand(["EVAL", "return {double=1.5}", "0"]),
    resp3 ? 1.5 : "1.5");
  const map = await c.sendCommand(["EVAL", "return {map={a='1'}}", "0"]);
  // (A RESP3 map is an object without a prototype by default: copy it to compare.)
  check("eval map", map instanceof Map ? Object.fromEntries(map) : Array.isArray(map) ? map : { ...map },
    resp3 ? { a: "1" } : ["a", "1"]);
  if (resp3) {
    // The last of the RESP3 handshake, sent again by hand: the same reply as from Redis.
    show("client maint_notifications", await errorText(
      c.sendCommand(["CLIENT", "MAINT_NOTIFICATIONS", "ON", "moving-endpoint-type", "none"])));
    const hello = await c.sendCommand(["HELLO", "3"]);
    const get = (k) => (hello instanceof Map ? hello.get(k) : hello[k]);
    check("hello 3 proto", get("proto"), 3);
    show("hello 3 server", get("server"));
    show("hello 3 role", get("role"));
    show("hello 3 mode", get("mode"));
    await c.hSet("h", { a: "1", b: "2" });
    check("hgetall", { ...(await c.hGetAll("h")) }, { a: "1", b: "2" });
    check("double", await c.zIncrBy("z", 1.5, "m"), 1.5);
  }

  // A pipeline of 100 commands, sent together.
  const p = c.multi();
  for (let i = 0; i < 50; i++) p.set(`p:${i}`, String(i)).incr(`p:${i}`);
  const replies = await within(p.execAsPipeline(), "pipeline");
  check("pipeline length", replies.length, 100);
  check("pipeline replies", replies, Array.from({ length: 50 }, (_, i) => ["OK", i + 1]).flat());
  // Auto-pipelining: 100 commands issued in one tick go out in one write.
  const auto = await within(
    Promise.all(Array.from({ length: 100 }, (_, i) => c.get(`p:${i % 50}`))), "auto-pipeline");
  check("auto-pipeline", auto, Array.from({ length: 100 }, (_, i) => String((i % 50) + 1)));

  // MULTI/EXEC.
  check("multi/exec",
    await c.multi().set("t:a", "1").incr("t:a").rPush("t:l", ["x", "y"]).lRange("t:l", 0, -1)
      .get("t:a").exec(),
    ["OK", 2, 2, ["x", "y"], "2"]);

  // WATCH, a write from another client, then EXEC: nothing runs.
  const other = await connect({ name: "node-other" });
  await c.set("w", "0");
  check("watch", await c.watch("w"), "OK");
  check("watched get", await c.get("w"), "0");
  await other.set("w", "changed");
  show("watch conflict", await errorText(c.multi().set("w", "mine").exec()));
  check("after watch conflict", await c.get("w"), "changed");
  await c.watch("w");
  check("watch without conflict", await c.multi().set("w", "mine").exec(), ["OK"]);
  check("after watch", await c.get("w"), "mine");
  // A transaction queuing an error: EXECABORT.
  show("execabort",
    await errorText(c.multi().set("e", "1").addCommand(["NOSUCHCOMMAND"]).exec()));

  // Pub/sub: subscribe on one client, publish from another.
  const sub = await connect({ name: "node-sub" });
  const received = [];
  let wake = () => {};
  const waitFor = (n, what) =>
    within(new Promise((resolve) => {
      wake = () => received.length >= n && resolve();
      wake();
    }), what);
  await within(sub.subscribe("chan", (message, channel) => {
    received.push(["message", channel, message]);
    wake();
  }), "subscribe");
  await within(sub.pSubscribe("ch*", (message, channel) => {
    received.push(["pmessage", channel, message]);
    wake();
  }), "psubscribe");
  check("publish", await other.publish("chan", "hello"), 2);
  await waitFor(2, "the published message");
  received.sort();
  check("messages", received, [["message", "chan", "hello"], ["pmessage", "chan", "hello"]]);
  await within(sub.unsubscribe("chan"), "unsubscribe");
  await within(sub.pUnsubscribe("ch*"), "punsubscribe");
  check("publish after unsubscribe", await other.publish("chan", "again"), 0);
  // (node-redis gives a Buffer here in RESP2, a string in RESP3.)
  check("ping after unsubscribe", String(await sub.ping()), "PONG");

  // A blocking pop on one client, released by a push from another.
  const blocker = await connect({ name: "node-blocker" });
  const popped = errorText(blocker.blPop("q", 10));
  // Not a timing assertion: pushed before or after BLPOP blocks, the reply is the same.
  await sleep(200);
  check("lpush", await other.lPush("q", "job"), 1);
  check("blpop", await within(popped, "BLPOP"), { key: "q", element: "job" });
  check("blpop on an empty list times out", await blocker.blPop("q", 0.1), null);

  // A database other than 0, chosen at connect (node-redis sends SELECT in its handshake).
  const db1 = await connect({ name: "node-db1", database: 1 });
  check("db1 set", await db1.set("only-in-1", "yes"), "OK");
  check("db1 get", await db1.get("only-in-1"), "yes");
  check("db1 dbsize", await db1.dbSize(), 1);
  check("db0 does not see db1", await c.get("only-in-1"), null);
  check("db1 client getname", await db1.clientGetName(), "node-db1");
  check("db1 pipeline", await db1.multi().incr("n").incr("n").execAsPipeline(), [1, 2]);
  check("db1 multi/exec", await db1.multi().incr("n").get("n").exec(), [3, "3"]);
  check("db0 n", await c.get("n"), null);
  // SELECT sent by hand.
  const single = await connect();
  // (node-redis v5's select resolves to nothing.)
  check("select 1", await single.select(1), undefined);
  check("select 1 get", await single.get("only-in-1"), "yes");
  check("select 0", await single.select(0), undefined);
  check("select 0 get", await single.get("only-in-1"), null);

  // Still in step after all of the above.
  check("echo", await c.echo("bye"), "bye");
  for (const client of [c, other, sub, blocker, db1, single]) client.destroy();
  check("client errors", errors, []);
  console.log("OK");
}

const watchdog = setTimeout(() => {
  console.error("FAILED: the script did not finish within 60 s");
  process.exit(1);
}, 60000);
watchdog.unref();

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`FAILED: ${e instanceof CheckFailed ? e.message : e.stack}`);
    process.exit(1);
  },
);
