// Threads and edits through Hearth with matrix-js-sdk, as Element shows them (issue 21).
//
// What it checks, against a running Hearth:
//   1. alice and bob register with the registration token (InteractiveAuth);
//   2. alice creates a room inviting bob, bob joins;
//   3. alice posts a message and starts a thread under it; bob replies in the thread;
//      alice edits another message (`m.replace`);
//   4. a fresh client of bob's, with thread support on (as Element runs it), starts
//      syncing: the SDK must find server-side thread support from /versions (v1.4) and
//      list the room's threads through `createThreadListMessagesRequest` (`/threads`):
//      the root is there with its bundled summary (two replies, the latest bob's);
//   5. `/messages` through `createMessagesRequest` carries alice's latest edit bundled on
//      the original (`unsigned.m.relations.m.replace`), so it shows edited on first load;
//   6. alice makes a space holding the room; bob walks it with `getRoomHierarchy`
//      (`/hierarchy`) and finds the space and the room, with the space's child event;
//   7. bob jumps to a date with `timestampToEvent`: from the typo's timestamp forwards
//      he lands on the typo itself.
//
// Usage: node threads.mjs --server URL --token REGISTRATION_TOKEN [--timeout-ms MS]
// On success it prints one JSON object on stdout: the root's id, the ids the thread list
// returned, the summary's count and latest reply, the edit and the bundled edit's id.
// On failure it prints "threads.mjs: FAILED: <what>" on stderr and exits 1.

import { parseArgs } from "node:util";

import { check, describe as describeWith, fail as failAs, register, startSyncing } from "./common.mjs";

console.log = console.info = console.debug = console.error;

const fail = (message) => failAs("threads.mjs", message);

const { values: args } = parseArgs({
    options: {
        server: { type: "string" },
        token: { type: "string" },
        "timeout-ms": { type: "string", default: "90000" },
    },
});
for (const name of ["server", "token"]) {
    if (!args[name]) fail(`--${name} is required`);
}

const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
logger.setLevel(process.env.HEARTH_JS_LOG || "warn");
const describe = (err) => describeWith(sdk, err);

async function scenario() {
    const baseUrl = args.server;
    const alice = await register(sdk, baseUrl, "alice", args.token, "Hearth js-sdk threads: alice");
    const bob = await register(sdk, baseUrl, "bob", args.token, "Hearth js-sdk threads: bob");
    const { room_id: room } = await alice.createRoom({ invite: [bob.getUserId()], name: "Plans" });
    await bob.joinRoom(room);

    const text = (body, extra = {}) => ({ msgtype: "m.text", body, ...extra });
    const { event_id: root } = await alice.sendEvent(room, "m.room.message", text("shall we meet?"));
    const inThread = { rel_type: "m.thread", event_id: root, is_falling_back: true, "m.in_reply_to": { event_id: root } };
    await alice.sendEvent(room, "m.room.message", text("tuesday?", { "m.relates_to": inThread }));
    const { event_id: latest } = await bob.sendEvent(room, "m.room.message", text("tuesday.", { "m.relates_to": inThread }));
    const { event_id: typo } = await alice.sendEvent(room, "m.room.message", text("see yuo"));
    const { event_id: edit } = await alice.sendEvent(
        room,
        "m.room.message",
        text("* see you", {
            "m.new_content": text("see you"),
            "m.relates_to": { rel_type: "m.replace", event_id: typo },
        }),
    );

    // bob on a new device, threads on, as Element runs the SDK.
    const login = await sdk.createClient({ baseUrl }).loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: "bob" },
        password: "correct horse battery staple",
    });
    const fresh = sdk.createClient({
        baseUrl,
        accessToken: login.access_token,
        userId: login.user_id,
        deviceId: login.device_id,
    });
    try {
        await startSyncing(sdk, fresh, { initialSyncLimit: 20, threadSupport: true });
        check(
            sdk.Thread.hasServerSideListSupport === sdk.FeatureSupport.Stable,
            `the SDK did not find stable thread list support (${sdk.Thread.hasServerSideListSupport})`,
        );
        const listed = await fresh.createThreadListMessagesRequest(room, null, 20, sdk.Direction.Backward);
        const ids = listed.chunk.map((e) => e.event_id);
        const rootEvent = listed.chunk.find((e) => e.event_id === root);
        check(rootEvent, `the thread list ${JSON.stringify(ids)} lacks the root ${root}`);
        const summary = rootEvent.unsigned?.["m.relations"]?.["m.thread"];
        check(summary, `the root carries no thread summary: ${JSON.stringify(rootEvent.unsigned)}`);
        check(summary.count === 2, `the summary counts ${summary.count} replies, not 2`);
        check(summary.latest_event?.event_id === latest, `the latest reply is ${summary.latest_event?.event_id}`);

        const page = await fresh.createMessagesRequest(room, null, 50, sdk.Direction.Backward);
        const original = page.chunk.find((e) => e.event_id === typo);
        check(original, "the edited message is not in /messages");
        const bundled = original.unsigned?.["m.relations"]?.["m.replace"];
        check(bundled?.event_id === edit, `the bundled edit is ${bundled?.event_id}, not ${edit}`);
        check(bundled.content?.["m.new_content"]?.body === "see you", "the bundled edit's new content is wrong");
        const { room_id: space } = await alice.createRoom({
            name: "Family",
            creation_content: { type: "m.space" },
            preset: "public_chat",
            initial_state: [{ type: "m.space.child", state_key: room, content: { via: ["choppa.xyz"] } }],
        });
        const walked = await fresh.getRoomHierarchy(space, 10);
        const walkedIds = walked.rooms.map((r) => r.room_id);
        check(walkedIds[0] === space && walkedIds.includes(room), `the hierarchy lists ${JSON.stringify(walkedIds)}`);
        check(
            walked.rooms[0].children_state.some((c) => c.state_key === room),
            "the space's entry lacks its child event",
        );
        const typoEvent = page.chunk.find((e) => e.event_id === typo);
        const jumped = await fresh.timestampToEvent(room, typoEvent.origin_server_ts, sdk.Direction.Forward);
        check(
            jumped.event_id === typo || jumped.origin_server_ts === typoEvent.origin_server_ts,
            `jumping to ${typoEvent.origin_server_ts} landed on ${jumped.event_id} (${jumped.origin_server_ts})`,
        );
        return {
            jumped: jumped.origin_server_ts === typoEvent.origin_server_ts,
            root,
            listed: ids,
            count: summary.count,
            latest: summary.latest_event.event_id,
            edit,
            bundled: bundled.event_id,
            space,
            hierarchy: walkedIds,
        };
    } finally {
        fresh.stopClient();
    }
}

const timeoutMs = Number(args["timeout-ms"]);
const timer = setTimeout(() => fail(`the scenario did not finish within ${timeoutMs} ms`), timeoutMs);
try {
    const result = await scenario();
    clearTimeout(timer);
    process.stdout.write(`${JSON.stringify(result)}\n`);
    process.exit(0);
} catch (err) {
    fail(describe(err));
}
