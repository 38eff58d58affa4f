// What the js-sdk client scripts share: failing with a message, waiting for an SDK event,
// registering through the SDK's InteractiveAuth (the UIA driver Element uses) with the
// registration token, and starting a client's sync.
//
// Each script routes console output to stderr before loading the SDK (stdout carries its
// JSON result only) and passes the loaded SDK module in.

export const PASSWORD = "correct horse battery staple";
export const SYNC_WAIT_MS = 30_000;

/** Print "<script>: FAILED: <message>" on stderr and exit 1. */
export function fail(script, message) {
    process.stderr.write(`${script}: FAILED: ${message}\n`);
    process.exit(1);
}

export function check(condition, message) {
    if (!condition) throw new Error(message);
}

/** Describe an SDK or fetch error with what the server said. */
export function describe(sdk, err) {
    if (err instanceof sdk.MatrixError) {
        return `${err.message} (HTTP ${err.httpStatus}, errcode ${err.errcode}, url ${err.url}, body ${JSON.stringify(err.data)})`;
    }
    return err?.stack || String(err);
}

/** Resolve when `emitter` emits `event` with arguments satisfying `pred`; reject after `ms`. */
export function waitFor(emitter, event, pred, ms, what) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
            emitter.off(event, listener);
            reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
        }, ms);
        function listener(...a) {
            let done;
            try {
                done = pred(...a);
            } catch (e) {
                clearTimeout(timer);
                emitter.off(event, listener);
                reject(e);
                return;
            }
            if (done) {
                clearTimeout(timer);
                emitter.off(event, listener);
                resolve(a);
            }
        }
        emitter.on(event, listener);
    });
}

/** Register `username` with the registration token; a client logged in as them. */
export async function register(sdk, baseUrl, username, token, deviceName, clientOpts = {}) {
    const anonymous = sdk.createClient({ baseUrl });
    let failStage;
    const stageFailed = new Promise((_, reject) => (failStage = reject));
    const auth = new sdk.InteractiveAuth({
        matrixClient: anonymous,
        supportedStages: [sdk.AuthType.RegistrationToken, sdk.AuthType.Dummy],
        doRequest: (authDict) =>
            anonymous.registerRequest({
                username,
                password: PASSWORD,
                initial_device_display_name: deviceName,
                ...(authDict ? { auth: authDict } : {}),
            }),
        stateUpdated: (stage, status) => {
            if (status.errcode || status.error) {
                failStage(new Error(`registering ${username}: stage ${stage} failed: ${status.errcode} ${status.error}`));
            } else if (stage === sdk.AuthType.RegistrationToken) {
                auth.submitAuthDict({ type: sdk.AuthType.RegistrationToken, token });
            } else {
                failStage(new Error(`registering ${username}: the server asks for stage ${stage}`));
            }
        },
        requestEmailToken: () => Promise.reject(new Error("no e-mail in this test")),
    });
    const registered = await Promise.race([auth.attemptAuth(), stageFailed]);
    check(registered.access_token, `registering ${username}: no access_token in ${JSON.stringify(registered)}`);
    check(
        registered.user_id.startsWith(`@${username}:`),
        `registering ${username}: user_id is ${registered.user_id}`,
    );
    return sdk.createClient({
        baseUrl,
        accessToken: registered.access_token,
        userId: registered.user_id,
        deviceId: registered.device_id,
        ...clientOpts,
    });
}

/** Start syncing and resolve once the first sync is through. */
export async function startSyncing(sdk, client, opts = { initialSyncLimit: 10 }) {
    const prepared = waitFor(
        client,
        sdk.ClientEvent.Sync,
        (state, _prev, data) => {
            if (state === sdk.SyncState.Error) {
                throw new Error(`${client.getUserId()}: sync failed: ${describe(sdk, data?.error)}`);
            }
            return state === sdk.SyncState.Prepared;
        },
        SYNC_WAIT_MS,
        `${client.getUserId()}'s first sync`,
    );
    await client.startClient(opts);
    await prepared;
}
