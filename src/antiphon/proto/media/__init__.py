"""The media face's sans-IO core: frames (:mod:`.frames`), Pipecat's protobuf schema
(:mod:`.schema`, ``frames.proto``) and serializers (:mod:`.serializers`), Twilio Media
Streams (:mod:`.twilio`), G.711 mu-law (:mod:`.g711`), WAV headers (:mod:`.wav`), streaming
resampling (:mod:`.resample`) and the audio pacer (:mod:`.pacing`)."""

__all__: list[str] = []
