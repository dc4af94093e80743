"""The one door out, towards the CIC and the devices.

Every publication goes through :class:`cic.channel.MqttAlarmChannel`: the alarm messages
(:mod:`cic.messages`, and their CAP 1.2 form, :mod:`cic.cap`), journalled first
(:mod:`cic.journal`, which also keeps the engine's saved state), the offender's notices
(:mod:`cic.notice`), the engine's status and the rejections. ``cic/schemas`` holds the alarm
message's JSON Schema."""
