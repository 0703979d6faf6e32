import CatenaCore
import CatenaWire
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

private typealias F = MessageFixtures

/// Every sample payload in a frame of its type, with distinct request ids; with `onePerCodec`, one
/// sample of each (the second: a non-trivial one), to keep byte-at-a-time verification fast.
private func payloadFrames(_ codecs: [PayloadCodec] = MessageFixtures.codecs, onePerCodec: Bool = false) -> [Frame] {
    var frames: [Frame] = []
    var id: UInt64 = 0
    for codec in codecs {
        for payload in onePerCodec ? [codec.samples[1]] : codec.samples {
            id += 1
            frames.append(Frame(type: codec.frameType, flags: id % 2 == 0 ? [.reply] : [], chainID: 7, requestID: id, epoch: 3,
                                payload: payload))
        }
    }
    return frames
}

private func concatenated(_ frames: [Frame]) -> ByteBuffer {
    var buffer = ByteBuffer()
    for frame in frames { frame.encode(into: &buffer) }
    return buffer
}

private func helloFrame() -> Frame {
    Frame(type: .hello, requestID: 1, payload: Hello(role: .client, clusterID: "prod-eu", senderID: "cli-1").encoded())
}

/// A write frame of exactly `size` encoded bytes (a put whose value fills the rest).
private func writeFrame(size: Int, requestID: UInt64 = 2) -> Frame {
    let empty = WriteRequest(requestID: F.requestID, type: .put, key: F.key("big"))
    let overhead = Frame.minimumSize + WritePayload.encode(empty).readableBytes
    let request = WriteRequest(requestID: F.requestID, type: .put, key: F.key("big"), value: F.pattern(size - overhead))
    let frame = Frame(type: .write, chainID: 1, requestID: requestID, epoch: 1, payload: WritePayload.encode(request))
    precondition(frame.encodedSize == size, "writeFrame(size:) miscounted")
    return frame
}

private func decodingChannel(_ decoder: FrameDecoder) throws -> EmbeddedChannel {
    let channel = EmbeddedChannel()
    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(decoder))
    return channel
}

/// Writes `frames` into `channel` one byte at a time and returns what came out; stops at the first error.
private func dripFeed(_ frames: [Frame], into channel: EmbeddedChannel) throws -> (frames: [Frame], error: CatenaError?, failedAt: Int?) {
    let bytes = F.bytes(concatenated(frames))
    var out: [Frame] = []
    for (i, byte) in bytes.enumerated() {
        do {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
        } catch let error as CatenaError {
            while let frame = try channel.readInbound(as: Frame.self) { out.append(frame) }
            return (out, error, i)
        }
        while let frame = try channel.readInbound(as: Frame.self) { out.append(frame) }
    }
    return (out, nil, nil)
}

@Suite("Message frames")
struct MessageFrameTests {

    // MARK: Payloads in frames

    @Test("Frames carrying every payload, verified by NIOTestUtils (byte by byte, in pieces, all at once)")
    func verifier() throws {
        var frames = payloadFrames(onePerCodec: true)
        // The LSN and key payloads travel in more frame types than their table row names.
        frames.append(Frame(type: .acknowledge, chainID: 7, requestID: 900, epoch: 3, payload: LSNPayload.encode(LSN(epoch: 3, seq: 17))))
        frames.append(Frame(type: .position, chainID: 7, requestID: 901, epoch: 3, payload: LSNPayload.encode(.zero)))
        frames.append(Frame(type: .head, chainID: 7, requestID: 902, epoch: 3, payload: KeyPayload.encode(F.key(F.nfd))))
        let pairs: [(ByteBuffer, [Frame])] = frames.map { ($0.encoded(), [$0]) } + [(concatenated(frames), frames)]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { FrameDecoder() }
    }

    @Test("Drip-fed frames deliver payloads that decode to the values sent", arguments: MessageFixtures.codecs)
    func dripFedPayloadsDecode(_ codec: PayloadCodec) throws {
        let frames = payloadFrames([codec])
        let channel = try decodingChannel(FrameDecoder())
        let result = try dripFeed(frames, into: channel)
        #expect(result.error == nil)
        #expect(result.frames == frames)
        for (frame, sample) in zip(result.frames, codec.samples) {
            #expect(frame.type == codec.frameType)
            #expect(try codec.canonical(frame.payload) == sample)
        }
        #expect(try channel.finish().isClean)
    }

    // MARK: First frame limit

    @Test("A first frame above firstFrameLimit is refused with frameTooLarge as soon as its length is in")
    func firstFrameAboveLimit() throws {
        let channel = try decodingChannel(FrameDecoder(firstFrameLimit: 1024))
        let result = try dripFeed([writeFrame(size: 1025)], into: channel)
        #expect(result.error?.code == .frameTooLarge)
        #expect(result.failedAt == 7, "refused on the 8th byte, before the body")
        #expect(result.frames.isEmpty)
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    @Test("After the first frame, a frame of the size that was refused first is accepted")
    func laterFrameOfSameSize() throws {
        let big = writeFrame(size: 1025)
        let channel = try decodingChannel(FrameDecoder(firstFrameLimit: 1024))
        let frames = [helloFrame(), big, writeFrame(size: 1025, requestID: 3), writeFrame(size: 4096, requestID: 4)]
        let result = try dripFeed(frames, into: channel)
        #expect(result.error == nil)
        #expect(result.frames == frames)
        #expect(result.frames[1].encodedSize == 1025)
        #expect(try WritePayload.decode(result.frames[1].payload).key == F.key("big"))
        #expect(try channel.finish().isClean)
    }

    @Test("firstFrameLimit boundary: at the limit accepted, one byte above refused",
          arguments: [(1023, true), (1024, true), (1025, false)])
    func firstFrameLimitBoundary(size: Int, accepted: Bool) throws {
        let frame = writeFrame(size: size)
        let channel = try decodingChannel(FrameDecoder(firstFrameLimit: 1024))
        do {
            try channel.writeInbound(frame.encoded())
            #expect(accepted, "a \(size)-byte first frame passed a 1024-byte limit")
            #expect(try channel.readInbound(as: Frame.self) == frame)
        } catch let error as CatenaError {
            #expect(!accepted, "a \(size)-byte first frame was refused: \(error)")
            #expect(error.code == .frameTooLarge)
        }
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    @Test("firstFrameLimit above maxFrameSize is capped by it; maxFrameSize still holds for later frames")
    func firstFrameLimitCappedByMax() throws {
        let first = try decodingChannel(FrameDecoder(maxFrameSize: 2048, firstFrameLimit: 1 << 20))
        #expect(try dripFeed([writeFrame(size: 2049)], into: first).error?.code == .frameTooLarge)
        _ = try? first.finish(acceptAlreadyClosed: true)

        let later = try decodingChannel(FrameDecoder(maxFrameSize: 2048, firstFrameLimit: 512))
        let result = try dripFeed([helloFrame(), writeFrame(size: 2048), writeFrame(size: 2049, requestID: 3)], into: later)
        #expect(result.frames.count == 2)
        #expect(result.error?.code == .frameTooLarge)
        _ = try? later.finish(acceptAlreadyClosed: true)
    }

    @Test("Without firstFrameLimit the first frame may be as large as maxFrameSize")
    func noFirstFrameLimit() throws {
        let frame = writeFrame(size: 4096)
        let channel = try decodingChannel(FrameDecoder(maxFrameSize: 4096))
        try channel.writeInbound(frame.encoded())
        #expect(try channel.readInbound(as: Frame.self) == frame)
        #expect(try channel.finish().isClean)
    }

    @Test("A decoder with firstFrameLimit, verified by NIOTestUtils: small first frames, then large ones")
    func verifierWithFirstFrameLimit() throws {
        // The verifier shuffles the pairs and feeds them through one decoder, so every pair starts
        // with a frame under the limit; frames after it are far above.
        let hello = helloFrame()
        #expect(hello.encodedSize <= 256)
        let pairs: [(ByteBuffer, [Frame])] = [
            (concatenated([hello, writeFrame(size: 1024)]), [hello, writeFrame(size: 1024)]),
            (concatenated([hello] + payloadFrames(onePerCodec: true)), [hello] + payloadFrames(onePerCodec: true)),
            (hello.encoded(), [hello]),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { FrameDecoder(firstFrameLimit: 256) }
    }
}
