// Pictures through Hearth with matrix-js-sdk's own media helpers (issue 17).
//
// What it checks, against a running Hearth:
//   1. alice and bob register with the registration token, through the SDK's
//      InteractiveAuth (the UIA driver Element uses): the server's flow must offer
//      `m.login.registration_token`;
//   2. alice uploads the PNG given by --image with `client.uploadContent` and gets an
//      `mxc://<server name>/...` URI back;
//   3. she sets it as her avatar (`setAvatarUrl`); bob reads her profile
//      (`getProfileInfo(alice, "avatar_url")`) and gets the very same mxc;
//   4. alice creates a private room inviting bob, bob joins, and alice sends the picture
//      as an `m.image` (`sendImageMessage`); bob's syncing client sees it in the room's
//      timeline;
//   5. bob turns the event's mxc into an authenticated download URL with the SDK's
//      `getHttpUriForMxc(..., useAuthentication=true)` (which implies allow_redirect; the
//      server's /versions must list v1.11, as Element checks before using it),
//      fetches it with `Authorization: Bearer <his token>` (following redirects) and
//      gets bytes identical to the upload; the same URL without the token is refused;
//   6. he turns it into a 32x32 "crop" thumbnail URL with the same helper, fetches it the
//      same way and the picture's header says 32x32.
//
// Usage: node media.mjs --server URL --token REGISTRATION_TOKEN --image FILE.png
//                       [--server-name NAME] [--timeout-ms MS]
// On success it prints one JSON object on stdout (and nothing else there): the mxc, the
// avatar, sha256 of the upload and of the download, the thumbnail's content type, size
// and dimensions, and the thumbnail bytes as base64, for the caller to check again.
// On failure it prints "media.mjs: FAILED: <what>" on stderr and exits 1. SDK logs go to
// stderr (level from HEARTH_JS_LOG, default "warn").

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { parseArgs } from "node:util";

import {
    check,
    describe as describeWith,
    fail as failAs,
    register as registerWith,
    startSyncing as startWith,
    SYNC_WAIT_MS,
    waitFor,
} from "./common.mjs";

// stdout carries the JSON result only: route every console method that writes to stdout
// to stderr before the SDK (and its logger) is loaded.
console.log = console.info = console.debug = console.error;

const fail = (message) => failAs("media.mjs", message);

const { values: args } = parseArgs({
    options: {
        server: { type: "string" },
        token: { type: "string" },
        image: { type: "string" },
        "server-name": { type: "string" },
        "timeout-ms": { type: "string", default: "90000" },
    },
});

for (const name of ["server", "token", "image"]) {
    if (!args[name]) fail(`--${name} is required`);
}

const sdk = await import("matrix-js-sdk");
const describe = (err) => describeWith(sdk, err);
const register = (baseUrl, username, token) =>
    registerWith(sdk, baseUrl, username, token, `Hearth js-sdk media: ${username}`);
const startSyncing = (client) => startWith(sdk, client);
const { logger } = await import("matrix-js-sdk/lib/logger.js");
logger.setLevel(process.env.HEARTH_JS_LOG || "warn");

const THUMB = { width: 32, height: 32, method: "crop" };

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

/** GET `url` with bob's token, following redirects; returns status, headers and bytes. */
async function fetchAuthenticated(url, accessToken) {
    const headers = accessToken ? { Authorization: `Bearer ${accessToken}` } : {};
    const resp = await fetch(url, { headers, redirect: "follow" });
    const body = Buffer.from(await resp.arrayBuffer());
    return {
        status: resp.status,
        contentType: resp.headers.get("content-type"),
        contentDisposition: resp.headers.get("content-disposition"),
        redirected: resp.redirected,
        finalUrl: resp.url,
        body,
    };
}

/** {format, width, height} from a PNG's IHDR or a JPEG's start-of-frame marker. */
function imageSize(bytes) {
    if (bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) {
        check(bytes.subarray(12, 16).toString("latin1") === "IHDR", "PNG without IHDR first");
        return { format: "png", width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) };
    }
    if (bytes[0] === 0xff && bytes[1] === 0xd8) {
        let i = 2;
        while (i + 9 < bytes.length) {
            check(bytes[i] === 0xff, `JPEG: no marker at offset ${i}`);
            const marker = bytes[i + 1];
            const length = bytes.readUInt16BE(i + 2);
            // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
            if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
                return { format: "jpeg", width: bytes.readUInt16BE(i + 7), height: bytes.readUInt16BE(i + 5) };
            }
            i += 2 + length;
        }
        throw new Error("JPEG without a start-of-frame marker");
    }
    throw new Error(`neither PNG nor JPEG (starts ${bytes.subarray(0, 8).toString("hex")})`);
}

async function scenario() {
    const baseUrl = args.server.replace(/\/$/, "");
    const picture = readFileSync(args.image);
    const size = imageSize(picture);
    check(size.format === "png", `--image ${args.image} is not a PNG`);
    const fileName = basename(args.image);

    const alice = await register(baseUrl, "alice", args.token);
    const bob = await register(baseUrl, "bob", args.token);
    try {
        await startSyncing(alice);
        await startSyncing(bob);

        // ---- 2. upload.
        const uploaded = await alice.uploadContent(picture, { name: fileName, type: "image/png" });
        const mxc = uploaded.content_uri;
        const serverName = args["server-name"];
        check(
            typeof mxc === "string" && mxc.startsWith(serverName ? `mxc://${serverName}/` : "mxc://"),
            `upload returned content_uri ${JSON.stringify(mxc)}`,
        );

        // ---- 3. avatar.
        await alice.setAvatarUrl(mxc);
        const profile = await bob.getProfileInfo(alice.getUserId(), "avatar_url");
        check(profile.avatar_url === mxc, `bob reads alice's avatar_url as ${profile.avatar_url}, not ${mxc}`);

        // ---- 4. the picture as an m.image into a room with bob.
        const { room_id: roomId } = await alice.createRoom({
            preset: sdk.Preset.PrivateChat,
            invite: [bob.getUserId()],
            name: "Hearth js-sdk media",
        });
        await bob.joinRoom(roomId);
        const seen = waitFor(
            bob,
            sdk.RoomEvent.Timeline,
            (event, room) =>
                room?.roomId === roomId &&
                event.getType() === sdk.EventType.RoomMessage &&
                event.getContent().msgtype === sdk.MsgType.Image &&
                event.getSender() === alice.getUserId(),
            SYNC_WAIT_MS,
            "the m.image in bob's timeline",
        );
        const info = { mimetype: "image/png", size: picture.length, w: size.width, h: size.height };
        const sent = await alice.sendImageMessage(roomId, mxc, info, fileName);
        const [imageEvent] = await seen;
        check(imageEvent.getId() === sent.event_id, `bob saw ${imageEvent.getId()}, alice sent ${sent.event_id}`);
        const seenUrl = imageEvent.getContent().url;
        check(seenUrl === mxc, `the m.image bob sees carries ${seenUrl}, not ${mxc}`);

        // ---- 5. authenticated download through the SDK's URL helper. Like Element, ask the
        // server first whether it speaks authenticated media (spec v1.11, /versions).
        check(await bob.isVersionSupported("v1.11"), "/versions does not list v1.11 (authenticated media)");
        const downloadUrl = sdk.getHttpUriForMxc(bob.baseUrl, seenUrl, undefined, undefined, undefined, false, true, true);
        check(
            downloadUrl.startsWith(`${baseUrl}/_matrix/client/v1/media/download/`),
            `getHttpUriForMxc gave ${downloadUrl}`,
        );
        check(
            bob.mxcUrlToHttp(seenUrl, undefined, undefined, undefined, false, true, true) === downloadUrl,
            "client.mxcUrlToHttp disagrees with getHttpUriForMxc",
        );
        const download = await fetchAuthenticated(downloadUrl, bob.getAccessToken());
        check(
            download.status === 200,
            `GET ${downloadUrl} with bob's token: HTTP ${download.status}: ${download.body.toString("utf8", 0, 500)}`,
        );
        check(
            download.body.equals(picture),
            `downloaded ${download.body.length} bytes (sha256 ${sha256(download.body)}) differ from the ` +
                `${picture.length} uploaded (sha256 ${sha256(picture)})`,
        );
        const anonymous = await fetchAuthenticated(downloadUrl, null);
        check(
            anonymous.status === 401,
            `GET ${downloadUrl} without a token: HTTP ${anonymous.status}, expected 401`,
        );

        // ---- 6. a 32x32 cropped thumbnail through the same helper.
        const thumbUrl = sdk.getHttpUriForMxc(
            bob.baseUrl, seenUrl, THUMB.width, THUMB.height, THUMB.method, false, true, true,
        );
        check(
            thumbUrl.startsWith(`${baseUrl}/_matrix/client/v1/media/thumbnail/`),
            `getHttpUriForMxc gave ${thumbUrl} for a thumbnail`,
        );
        const thumb = await fetchAuthenticated(thumbUrl, bob.getAccessToken());
        check(
            thumb.status === 200,
            `GET ${thumbUrl} with bob's token: HTTP ${thumb.status}: ${thumb.body.toString("utf8", 0, 500)}`,
        );
        const thumbSize = imageSize(thumb.body);
        check(
            thumbSize.width === THUMB.width && thumbSize.height === THUMB.height,
            `the ${THUMB.width}x${THUMB.height} ${THUMB.method} thumbnail is ${thumbSize.width}x${thumbSize.height} ` +
                `(${thumbSize.format}, ${thumb.contentType})`,
        );

        return {
            sdk_version: JSON.parse(
                readFileSync(new URL("./node_modules/matrix-js-sdk/package.json", import.meta.url), "utf8"),
            ).version,
            alice: alice.getUserId(),
            bob: bob.getUserId(),
            room_id: roomId,
            mxc,
            avatar_url: profile.avatar_url,
            event_url: seenUrl,
            upload_sha256: sha256(picture),
            upload_size: picture.length,
            download_url: downloadUrl,
            download_status: download.status,
            download_sha256: sha256(download.body),
            download_content_type: download.contentType,
            download_content_disposition: download.contentDisposition,
            download_redirected: download.redirected,
            anonymous_download_status: anonymous.status,
            thumbnail_url: thumbUrl,
            thumbnail_status: thumb.status,
            thumbnail_content_type: thumb.contentType,
            thumbnail_format: thumbSize.format,
            thumbnail_width: thumbSize.width,
            thumbnail_height: thumbSize.height,
            thumbnail_size: thumb.body.length,
            thumbnail_base64: thumb.body.toString("base64"),
        };
    } finally {
        alice.stopClient();
        bob.stopClient();
    }
}

const timeoutMs = Number(args["timeout-ms"]);
const timer = setTimeout(() => fail(`the scenario did not finish within ${timeoutMs} ms`), timeoutMs);
try {
    const result = await scenario();
    clearTimeout(timer);
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exit(0);
} catch (err) {
    fail(describe(err));
}
