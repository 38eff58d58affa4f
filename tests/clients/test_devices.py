"""Device lists as matrix-nio reads them (and so matrix-commander's `--devices`).

nio validates `GET /devices` against a schema that requires `display_name`,
`last_seen_ip` and `last_seen_ts` on every device, null or not: a device logged in
without a name must still be listed, the name given at registration must be the
device's name, and the address it was last seen from must be recorded.
"""

from __future__ import annotations

import asyncio

from nio import AsyncClient
from nio.responses import DevicesResponse, LoginResponse, RegisterResponse

PASSWORD = "correct horse battery staple"


def test_nio_lists_named_and_nameless_devices(hearth):
    async def scenario():
        phone = AsyncClient(hearth.url, "carol")
        laptop = AsyncClient(hearth.url, f"@carol:{hearth.server_name}")
        try:
            registered = await phone.register_with_token(
                "carol", PASSWORD, hearth.registration_token, device_name="Carol's phone"
            )
            assert isinstance(registered, RegisterResponse), registered
            # nio sends no initial_device_display_name when the name is empty.
            logged_in = await laptop.login(PASSWORD, device_name="")
            assert isinstance(logged_in, LoginResponse), logged_in

            listed = await phone.devices()
            assert isinstance(listed, DevicesResponse), f"nio could not read the device list: {listed!r}"
            by_id = {d.id: d for d in listed.devices}
            assert set(by_id) == {phone.device_id, laptop.device_id}, by_id
            assert by_id[phone.device_id].display_name == "Carol's phone"
            assert by_id[laptop.device_id].display_name is None
            assert by_id[phone.device_id].last_seen_ip == "127.0.0.1"
            assert by_id[phone.device_id].last_seen_date is not None
        finally:
            await phone.close()
            await laptop.close()

    asyncio.run(scenario())
