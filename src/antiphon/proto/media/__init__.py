"""The media face's sans-IO core: Pipecat frames (:mod:`.frames`), their protobuf schema
(:mod:`.schema`, ``frames.proto``) and serializers (:mod:`.serializers`), WAV headers
(:mod:`.wav`) and the audio pacer (:mod:`.pacing`)."""
