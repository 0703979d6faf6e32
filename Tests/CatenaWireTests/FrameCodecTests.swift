import CatenaCore
import CatenaTestSupport
import CatenaWire
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing


// MARK: - Helpers

/// Every frame type this build names, plus one it does not (the codec must pass it through; refusing
/// unknown types is the protocol layer's business).
fileprivate let frameTypesUnderTest: [FrameType] = [.hello, .welcome, .error, .ping, .pong, FrameType(rawValue: 200)]

/// The error codes the parser may throw.
fileprivate let parserErrorCodes: Set<CatenaError.Code> = [.malformed, .frameTooLarge, .checksumMismatch]

/// `count` seeded random bytes.
fileprivate func frameTestBytes(_ count: Int, _ rng: inout SplitMix64) -> [UInt8] {
    var out = [UInt8]()
    out.reserveCapacity(count + 8)
    while out.count < count {
        withUnsafeBytes(of: rng.next().littleEndian) { out.append(contentsOf: $0) }
    }
    out.removeLast(out.count - count)
    return out
}

/// A frame with random flags, ids, epoch, header extension (0...`maxExtension` bytes) and payload.
fileprivate func randomFrame(_ rng: inout SplitMix64, type: FrameType? = nil, payloadSize: Int? = nil,
                             maxPayload: Int = 256, maxExtension: Int = 64) -> Frame {
    let extCount = Int.random(in: 0...maxExtension, using: &rng)
    let size = payloadSize ?? Int.random(in: 0...maxPayload, using: &rng)
    return Frame(
        type: type ?? frameTypesUnderTest.randomElement(using: &rng)!,
        flags: FrameFlags(rawValue: UInt8.random(in: .min ... .max, using: &rng)),
        chainID: ChainID.random(in: .min ... .max, using: &rng),
        requestID: rng.next(),
        epoch: rng.next(),
        headerExtension: frameTestBytes(extCount, &rng),
        payload: ByteBuffer(bytes: frameTestBytes(size, &rng)))
}

fileprivate func encodedBytes(_ frames: [Frame]) -> [UInt8] {
    var buffer = ByteBuffer()
    for frame in frames { frame.encode(into: &buffer) }
    return Array(buffer.readableBytesView)
}

fileprivate func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

fileprivate func readLE<T: FixedWidthInteger>(_ bytes: [UInt8], at offset: Int, as: T.Type) -> T {
    var value = T.zero
    for i in 0..<MemoryLayout<T>.size { value |= T(bytes[offset + i]) << (8 * i) }
    return value
}

/// Recomputes the trailing checksum of a single hand-built frame so that only the field under test is wrong.
fileprivate func sealed(_ bytes: [UInt8]) -> [UInt8] {
    var out = bytes
    let sum = le(XXH3.hash(Array(out[0..<(out.count - 8)])))
    out.replaceSubrange((out.count - 8)..<out.count, with: sum)
    return out
}

/// What one call of the parser says about `bytes`.
fileprivate enum ParseOutcome: Hashable, CustomStringConvertible {
    case frame(Frame, consumed: Int)
    case needMore
    case error(CatenaError.Code)

    var description: String {
        switch self {
        case .frame(let f, let n): "frame(\(f.type), consumed \(n))"
        case .needMore: "needMore"
        case .error(let code): "error(\(code))"
        }
    }
}

fileprivate func parseOnce(_ bytes: [UInt8], maxFrameSize: Int = 17 << 20) -> ParseOutcome {
    var buffer = ByteBuffer(bytes: bytes)
    do {
        guard let frame = try FrameParser(maxFrameSize: maxFrameSize).next(&buffer) else { return .needMore }
        return .frame(frame, consumed: bytes.count - buffer.readableBytes)
    } catch {
        return .error(error.code)
    }
}

/// An embedded channel decoding frames, as a server connection would.
fileprivate func decodingChannel(maxFrameSize: Int = 17 << 20) throws -> EmbeddedChannel {
    let channel = EmbeddedChannel()
    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize)))
    return channel
}

fileprivate func drainFrames(_ channel: EmbeddedChannel) throws -> [Frame] {
    var frames: [Frame] = []
    while let frame = try channel.readInbound(as: Frame.self) { frames.append(frame) }
    return frames
}

/// The result of feeding bytes through a decoding channel in random chunks.
fileprivate struct FeedResult {
    var frames: [Frame] = []
    /// The error the pipeline reported (while feeding, or at EOF for a truncated tail).
    var error: CatenaError?
    var errorAtEOF = false
    var writes = 0
}

/// Feeds `bytes` in random chunks (1...`maxChunk`) through a `FrameDecoder`, stopping at the first
/// error, then closes the channel (EOF). Checks the bounded-buffer property after every write.
fileprivate func feedInChunks(_ bytes: [UInt8], maxFrameSize: Int, maxChunk: Int, rng: inout SplitMix64,
                              sourceLocation: SourceLocation = #_sourceLocation) throws -> FeedResult {
    let channel = try decodingChannel(maxFrameSize: maxFrameSize)
    var result = FeedResult()
    var fed = 0
    var consumed = 0
    while fed < bytes.count {
        let n = Int.random(in: 1...min(maxChunk, bytes.count - fed), using: &rng)
        result.writes += 1
        do {
            try channel.writeInbound(ByteBuffer(bytes: bytes[fed..<(fed + n)]))
        } catch let error as CatenaError {
            result.error = error
        } catch {
            Issue.record("unexpected error type \(error)", sourceLocation: sourceLocation)
            result.error = CatenaError(.named("unexpected"), "\(error)")
        }
        fed += n
        let frames = try drainFrames(channel)
        consumed += frames.reduce(0) { $0 + $1.encodedSize }
        result.frames += frames
        if result.error != nil { break }
        // What the decoder still holds is less than one maximal frame: an oversized length is refused
        // before its body is awaited.
        #expect(fed - consumed < maxFrameSize, "decoder holds \(fed - consumed) bytes", sourceLocation: sourceLocation)
    }
    if result.error == nil {
        do {
            _ = try channel.finish()
        } catch let error as CatenaError {
            result.error = error
            result.errorAtEOF = true
        }
        result.frames += try drainFrames(channel)
    } else {
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }
    return result
}

// MARK: - Tests

@Suite("Frame codec")
struct FrameCodecTests {

    // MARK: Round trips

    @Test("Round trip of every frame type, random fields and extensions", arguments: [0, 1, 31, 32, 33, 4096, 65_536, 1 << 20])
    func roundTrip(payloadSize: Int) throws {
        var rng = SplitMix64(seed: 0xC0DE_0000 &+ UInt64(payloadSize))
        let extensionSizes = [0, 1, 7, 64, 33, 2]
        for (i, type) in frameTypesUnderTest.enumerated() {
            var frame = randomFrame(&rng, type: type, payloadSize: payloadSize)
            frame.headerExtension = frameTestBytes(extensionSizes[i % extensionSizes.count], &rng)
            var buffer = frame.encoded()
            #expect(buffer.readableBytes == frame.encodedSize)
            // Bytes after the frame (the start of the next one) must be left alone.
            buffer.writeBytes([0x43, 0x41])
            let parsed = try FrameParser().next(&buffer)
            #expect(parsed == frame)
            #expect(parsed?.headerExtension == frame.headerExtension)
            #expect(buffer.readableBytes == 2, "the parser consumed exactly encodedSize bytes")
            #expect(try FrameParser().next(&buffer) == nil)
            // And it re-encodes byte for byte.
            if let parsed { #expect(parsed.encoded() == frame.encoded()) }
        }
    }

    @Test("Frames back to back in one buffer")
    func backToBack() throws {
        var rng = SplitMix64(seed: 42)
        let frames = (0..<50).map { _ in randomFrame(&rng, maxPayload: 2000) }
        var buffer = ByteBuffer(bytes: encodedBytes(frames))
        var parsed: [Frame] = []
        while let frame = try FrameParser().next(&buffer) { parsed.append(frame) }
        #expect(parsed == frames)
        #expect(buffer.readableBytes == 0)
    }

    @Test("Encoding appends to a buffer with a moved reader index; parsing works at any reader index")
    func nonZeroReaderIndex() throws {
        var rng = SplitMix64(seed: 7)
        let frame = randomFrame(&rng, maxPayload: 100)
        var buffer = ByteBuffer(bytes: [9, 9, 9])
        buffer.moveReaderIndex(forwardBy: 2)
        frame.encode(into: &buffer)
        #expect(buffer.readableBytes == 1 + frame.encodedSize)
        buffer.moveReaderIndex(forwardBy: 1)
        #expect(Array(buffer.readableBytesView) == Array(frame.encoded().readableBytesView),
                "the checksum covers the frame only, not what the buffer held before")
        #expect(try FrameParser().next(&buffer) == frame)
    }

    @Test("Minimal frame: no extension, empty payload")
    func minimalFrame() throws {
        let frame = Frame(type: .ping)
        #expect(frame.encodedSize == Frame.minimumSize)
        #expect(parseOnce(Array(frame.encoded().readableBytesView)) == .frame(frame, consumed: 40))
    }

    @Test("Decoder verified by NIOTestUtils (drip-fed byte by byte, in pieces, all at once)")
    func verifier() throws {
        var rng = SplitMix64(seed: 99)
        let a = randomFrame(&rng, type: .hello, maxPayload: 64)
        let b = randomFrame(&rng, type: .ping, payloadSize: 0, maxExtension: 0)
        let c = randomFrame(&rng, type: .error, maxPayload: 200)
        let d = randomFrame(&rng, type: FrameType(rawValue: 77), maxPayload: 32)
        let e = Frame(type: .pong, headerExtension: [1, 2, 3, 4, 5, 6, 7, 8])
        let pairs: [(ByteBuffer, [Frame])] = [
            (a.encoded(), [a]),
            (ByteBuffer(bytes: encodedBytes([b, c])), [b, c]),
            (ByteBuffer(bytes: encodedBytes([d, e, a])), [d, e, a]),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { FrameDecoder() }
    }

    @Test("Frame encoder in a pipeline writes the same bytes as Frame.encode")
    func encoderHandler() throws {
        var rng = SplitMix64(seed: 5)
        let frame = randomFrame(&rng)
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
        try channel.writeOutbound(frame)
        let written = try channel.readOutbound(as: ByteBuffer.self)
        #expect(written == frame.encoded())
        _ = try channel.finish()
    }

    // MARK: Layout

    @Test("Layout: magic, little-endian length, header length, fields, checksum")
    func layout() {
        let frame = Frame(type: .ping, flags: [.reply, .more], chainID: 0x0102_0304, requestID: 0x1122_3344_5566_7788,
                          epoch: 0x0A0B_0C0D_0E0F_1011, payload: ByteBuffer(bytes: Array("hi".utf8)))
        let bytes = Array(frame.encoded().readableBytesView)
        #expect(bytes.count == frame.encodedSize)
        #expect(Array(bytes[0..<4]) == [0x43, 0x41, 0x54, 0x4E])
        #expect(Array(bytes[0..<4]) == Array("CATN".utf8))
        #expect(Int(readLE(bytes, at: 4, as: UInt32.self)) == frame.encodedSize)
        #expect(Array(bytes[4..<8]) == [42, 0, 0, 0])
        #expect(Array(bytes[8..<10]) == [32, 0])
        #expect(bytes[10] == 4)
        #expect(bytes[11] == 3)
        #expect(Array(bytes[12..<16]) == [0x04, 0x03, 0x02, 0x01])
        #expect(Array(bytes[16..<24]) == [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
        #expect(Array(bytes[24..<32]) == [0x11, 0x10, 0x0F, 0x0E, 0x0D, 0x0C, 0x0B, 0x0A])
        #expect(Array(bytes[32..<34]) == Array("hi".utf8))
        #expect(readLE(bytes, at: 34, as: UInt64.self) == XXH3.hash(Array(bytes[0..<34])))
    }

    @Test("Layout with a header extension: header length counts it, payload follows it")
    func layoutWithExtension() {
        let ext: [UInt8] = [0xA0, 0xA1, 0xA2, 0xA3, 0xA4]
        let frame = Frame(type: .hello, headerExtension: ext, payload: ByteBuffer(bytes: [0xEE]))
        let bytes = Array(frame.encoded().readableBytesView)
        #expect(Int(readLE(bytes, at: 4, as: UInt32.self)) == 32 + 5 + 1 + 8)
        #expect(readLE(bytes, at: 8, as: UInt16.self) == 37)
        #expect(Array(bytes[32..<37]) == ext)
        #expect(bytes[37] == 0xEE)
    }

    @Test("A header written by a later format (header length 48) is kept byte for byte")
    func laterFormatHeader() throws {
        // What a newer build might write: ack mode (u8), padding, minimum LSN (u64), 7 more bytes.
        let later: [UInt8] = [2, 0, 0, 0, 0, 0, 0, 0] + le(UInt64(123_456_789)) + [0xFF]
        let payload = Array("value".utf8)
        let length = 32 + later.count + payload.count + 8
        var bytes = le(Frame.magic) + le(UInt32(length)) + le(UInt16(32 + later.count))
        bytes += [16, 0x80] + le(UInt32(3)) + le(UInt64(77)) + le(UInt64(5))
        bytes += later + payload + [0, 0, 0, 0, 0, 0, 0, 0]
        bytes = sealed(bytes)

        guard case .frame(let frame, let consumed) = parseOnce(bytes) else {
            Issue.record("a later-format frame was refused: \(parseOnce(bytes))")
            return
        }
        #expect(consumed == bytes.count)
        #expect(frame.type == FrameType(rawValue: 16))
        #expect(frame.flags.rawValue == 0x80, "unknown flag bits are carried")
        #expect(frame.chainID == 3 && frame.requestID == 77 && frame.epoch == 5)
        #expect(frame.headerExtension == later)
        #expect(Array(frame.payload.readableBytesView) == payload)
        #expect(Array(frame.encoded().readableBytesView) == bytes, "re-encoding reproduces the later frame byte for byte")
    }

    @Test("A header extension may fill the frame (empty payload)")
    func extensionFillsFrame() {
        let frame = Frame(type: .pong, headerExtension: Array(repeating: 0x5A, count: 100))
        let bytes = Array(frame.encoded().readableBytesView)
        #expect(Int(readLE(bytes, at: 8, as: UInt16.self)) == bytes.count - 8)
        #expect(parseOnce(bytes) == .frame(frame, consumed: bytes.count))
    }

    // MARK: Errors

    @Test("Another protocol's first byte is refused at once", arguments: ["GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\u{16}\u{03}\u{01}\u{02}\u{00}", "SSH-2.0-OpenSSH_9.6\r\n"])
    func garbageFirstByte(_ text: String) throws {
        let bytes = Array(text.utf8)
        #expect(parseOnce(Array(bytes.prefix(1))) == .error(.malformed))
        let channel = try decodingChannel()
        let error = #expect(throws: CatenaError.self) { try channel.writeInbound(ByteBuffer(bytes: bytes.prefix(1))) }
        #expect(error?.code == .malformed)
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    @Test("A wrong magic byte is refused as soon as it arrives, not after 8 bytes", arguments: 0..<4)
    func wrongMagicByte(at position: Int) throws {
        var bytes = Array(Frame(type: .ping).encoded().readableBytesView)
        bytes[position] ^= 0x20
        let channel = try decodingChannel()
        for i in 0..<position {
            #expect(parseOnce(Array(bytes[0...i])) == .needMore)
            try channel.writeInbound(ByteBuffer(bytes: [bytes[i]]))
        }
        #expect(parseOnce(Array(bytes[0...position])) == .error(.malformed))
        let error = #expect(throws: CatenaError.self) { try channel.writeInbound(ByteBuffer(bytes: [bytes[position]])) }
        #expect(error?.code == .malformed)
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    @Test("A length above maxFrameSize is refused once the 8-byte prefix is in, before the body",
          arguments: [(64 << 10, UInt32(64 << 10) + 1), (64 << 10, UInt32.max), (17 << 20, UInt32(17 << 20) + 1), (17 << 20, UInt32.max)])
    func oversizedLength(maxFrameSize: Int, length: UInt32) throws {
        let prefix = le(Frame.magic) + le(length)
        for n in 1..<8 { #expect(parseOnce(Array(prefix[0..<n]), maxFrameSize: maxFrameSize) == .needMore) }
        #expect(parseOnce(prefix, maxFrameSize: maxFrameSize) == .error(.frameTooLarge))

        // Through the decoder, drip-fed: nothing for 7 bytes, the refusal on the 8th; the body is never sent.
        let channel = try decodingChannel(maxFrameSize: maxFrameSize)
        for byte in prefix.dropLast() { try channel.writeInbound(ByteBuffer(bytes: [byte])) }
        let error = #expect(throws: CatenaError.self) { try channel.writeInbound(ByteBuffer(bytes: [prefix[7]])) }
        #expect(error?.code == .frameTooLarge)
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    @Test("A length of exactly maxFrameSize is awaited, then accepted")
    func lengthAtLimit() throws {
        let maxFrameSize = 4096
        let frame = Frame(type: .ping, payload: ByteBuffer(repeating: 7, count: maxFrameSize - Frame.minimumSize))
        let bytes = Array(frame.encoded().readableBytesView)
        #expect(bytes.count == maxFrameSize)
        #expect(parseOnce(Array(bytes.dropLast()), maxFrameSize: maxFrameSize) == .needMore)
        #expect(parseOnce(bytes, maxFrameSize: maxFrameSize) == .frame(frame, consumed: maxFrameSize))
        #expect(parseOnce(bytes, maxFrameSize: maxFrameSize - 1) == .error(.frameTooLarge))
    }

    @Test("A length below the minimum frame is malformed", arguments: [UInt32(0), 1, 8, 32, 39])
    func lengthBelowMinimum(_ length: UInt32) {
        let prefix = le(Frame.magic) + le(length)
        #expect(parseOnce(prefix) == .error(.malformed))
        #expect(parseOnce(prefix + Array(repeating: 0, count: 64)) == .error(.malformed))
    }

    @Test("A header length that does not fit the frame is malformed", arguments: [UInt16(0), 1, 31, 43, 60, 0xFFFF] as [UInt16])
    func badHeaderLength(_ headerLength: UInt16) {
        // A 50-byte frame: 32 header + 10 payload + 8 checksum; header length may be 32...42.
        let frame = Frame(type: .ping, payload: ByteBuffer(repeating: 1, count: 10))
        var bytes = Array(frame.encoded().readableBytesView)
        bytes.replaceSubrange(8..<10, with: le(headerLength))
        #expect(parseOnce(sealed(bytes)) == .error(.malformed))
        #expect(parseOnce(bytes) == .error(.malformed))
    }

    @Test("Header lengths that fit are accepted (boundaries)", arguments: [UInt16(32), 33, 42])
    func goodHeaderLength(_ headerLength: UInt16) {
        let frame = Frame(type: .ping, payload: ByteBuffer(repeating: 1, count: 10))
        var bytes = Array(frame.encoded().readableBytesView)
        bytes.replaceSubrange(8..<10, with: le(headerLength))
        guard case .frame(let parsed, let consumed) = parseOnce(sealed(bytes)) else {
            Issue.record("refused: \(parseOnce(sealed(bytes)))")
            return
        }
        #expect(consumed == 50)
        #expect(parsed.headerExtension.count == Int(headerLength) - 32)
        #expect(parsed.headerExtension.count + parsed.payload.readableBytes == 10)
    }

    @Test("Every single flipped bit is refused (or awaits more data), never a different frame")
    func everyBitFlip() throws {
        var rng = SplitMix64(seed: 11)
        let frame = randomFrame(&rng, type: .hello, payloadSize: 20, maxExtension: 0)
        var withExt = frame
        withExt.headerExtension = [1, 2, 3, 4]
        for original in [frame, withExt] {
            let bytes = Array(original.encoded().readableBytesView)
            for index in bytes.indices {
                for bit in 0..<8 {
                    var mutated = bytes
                    mutated[index] ^= 1 << bit
                    let outcome = parseOnce(mutated)
                    let expected: Set<ParseOutcome>
                    switch index {
                    case 0..<4:
                        expected = [.error(.malformed)]
                    case 4..<8:
                        let length = Int(readLE(mutated, at: 4, as: UInt32.self))
                        if length > 17 << 20 { expected = [.error(.frameTooLarge)] }
                        else if length < Frame.minimumSize { expected = [.error(.malformed)] }
                        else if length > bytes.count { expected = [.needMore] }
                        else { expected = [.error(.malformed), .error(.checksumMismatch)] }
                    case 8..<10:
                        let header = Int(readLE(mutated, at: 8, as: UInt16.self))
                        expected = header < 32 || header > bytes.count - 8 ? [.error(.malformed)] : [.error(.checksumMismatch)]
                    default:
                        expected = [.error(.checksumMismatch)]
                    }
                    #expect(expected.contains(outcome), "byte \(index) bit \(bit): \(outcome), expected one of \(expected)")
                }
            }
        }
    }

    @Test("A truncated frame needs more data; at EOF the decoder reports it")
    func truncated() throws {
        var rng = SplitMix64(seed: 12)
        let frame = randomFrame(&rng, maxPayload: 100)
        let bytes = Array(frame.encoded().readableBytesView)
        for n in 0..<bytes.count {
            #expect(parseOnce(Array(bytes[0..<n])) == .needMore, "prefix of \(n) bytes")
        }
        for cut in [1, 3, 4, 7, 8, 9, 32, bytes.count - 1] {
            let channel = try decodingChannel()
            try channel.writeInbound(ByteBuffer(bytes: bytes[0..<cut]))
            #expect(try channel.readInbound(as: Frame.self) == nil)
            let error = #expect(throws: CatenaError.self, "cut at \(cut)") { _ = try channel.finish() }
            #expect(error?.code == .malformed)
        }
        // A whole frame followed by half of the next: the first is delivered, then the tail is an error at EOF.
        let channel = try decodingChannel()
        try channel.writeInbound(ByteBuffer(bytes: bytes + bytes.prefix(10)))
        #expect(try channel.readInbound(as: Frame.self) == frame)
        let error = #expect(throws: CatenaError.self) { _ = try channel.finish() }
        #expect(error?.code == .malformed)
        // A clean end after whole frames is no error.
        let clean = try decodingChannel()
        try clean.writeInbound(ByteBuffer(bytes: bytes + bytes))
        #expect(try drainFrames(clean) == [frame, frame])
        #expect(try clean.finish().isClean)
    }

    @Test("A bad connection does not disturb another one")
    func otherConnectionsKeepWorking() throws {
        var rng = SplitMix64(seed: 13)
        let frames = (0..<4).map { _ in randomFrame(&rng) }
        let good = try decodingChannel()
        let bad = try decodingChannel()
        try good.writeInbound(ByteBuffer(bytes: encodedBytes(Array(frames[0..<2]))))
        #expect(throws: CatenaError.self) { try bad.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n")) }
        try good.writeInbound(ByteBuffer(bytes: encodedBytes(Array(frames[2..<4]))))
        #expect(try drainFrames(good) == frames)
        #expect(try good.finish().isClean)
        _ = try? bad.finish(acceptAlreadyClosed: true)
    }

    // MARK: Fuzz

    @Test("Fuzz: random bytes in random chunks", .timeLimit(.minutes(1)))
    func fuzzRandom() throws {
        var rng = SplitMix64(seed: 0xF00D)
        let maxFrameSize = 64 << 10
        var errors = 0
        for _ in 0..<2000 {
            var bytes: [UInt8] = []
            // Half the buffers start like a frame, so the fuzz reaches past the magic.
            if Bool.random(using: &rng) {
                bytes += le(Frame.magic)
                if Bool.random(using: &rng) {
                    bytes += le(UInt32.random(in: 0...400, using: &rng))
                    if Bool.random(using: &rng) { bytes += le(UInt16.random(in: 28...48, using: &rng)) }
                }
            }
            bytes += frameTestBytes(Int.random(in: 0...300, using: &rng), &rng)
            let result = try feedInChunks(bytes, maxFrameSize: maxFrameSize, maxChunk: 64, rng: &rng)
            #expect(result.writes <= bytes.count)
            for frame in result.frames {
                // Practically unreachable (a random 64-bit checksum would have to match), but if it happens
                // the frame must be self-consistent.
                #expect(parseOnce(Array(frame.encoded().readableBytesView)) == .frame(frame, consumed: frame.encodedSize))
            }
            if let error = result.error {
                errors += 1
                #expect(parserErrorCodes.contains(error.code), "unexpected code \(error.code)")
            }
        }
        // Random bytes are refused (empty buffers and some "need more" tails are not errors).
        #expect(errors > 1500)
    }

    @Test("Fuzz: mutated valid frames (bit flips, truncations, insertions, deletions, length rewrites)",
          .timeLimit(.minutes(1)))
    func fuzzMutated() throws {
        var rng = SplitMix64(seed: 0xBEEF)
        let maxFrameSize = 64 << 10
        var delivered = 0
        var refused = 0
        for round in 0..<2000 {
            let frames = (0..<Int.random(in: 1...3, using: &rng)).map { _ in randomFrame(&rng, maxPayload: 300, maxExtension: 16) }
            let sizes = frames.map(\.encodedSize)
            var bytes = encodedBytes(frames)
            let mutation = round % 5
            switch mutation {
            case 0: // bit flips
                for _ in 0..<Int.random(in: 1...3, using: &rng) {
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
                }
            case 1: // truncation
                bytes.removeLast(Int.random(in: 1...bytes.count, using: &rng))
            case 2: // insertion
                let at = Int.random(in: 0...bytes.count, using: &rng)
                bytes.insert(contentsOf: frameTestBytes(Int.random(in: 1...16, using: &rng), &rng), at: at)
            case 3: // deletion
                let at = Int.random(in: 0..<bytes.count, using: &rng)
                bytes.removeSubrange(at..<min(bytes.count, at + Int.random(in: 1...16, using: &rng)))
            default: // rewrite one frame's length field
                let k = Int.random(in: 0..<frames.count, using: &rng)
                let start = sizes[0..<k].reduce(0, +)
                let candidates: [UInt32] = [0, 39, 40, UInt32(sizes[k] - 1), UInt32(sizes[k] + 1), UInt32(sizes[k] + 100),
                                            UInt32(maxFrameSize), UInt32(maxFrameSize + 1), .max, .random(in: 0 ... .max, using: &rng)]
                bytes.replaceSubrange((start + 4)..<(start + 8), with: le(candidates.randomElement(using: &rng)!))
            }
            let result = try feedInChunks(bytes, maxFrameSize: maxFrameSize, maxChunk: Int.random(in: 1...256, using: &rng), rng: &rng)
            // Only untouched frames come out, in order: a prefix of what was sent.
            #expect(result.frames.count <= frames.count && Array(frames.prefix(result.frames.count)) == result.frames,
                    "round \(round), mutation \(mutation): a frame different from the ones sent came out")
            for frame in result.frames {
                #expect(parseOnce(Array(frame.encoded().readableBytesView)) == .frame(frame, consumed: frame.encodedSize))
            }
            delivered += result.frames.count
            if let error = result.error {
                refused += 1
                #expect(parserErrorCodes.contains(error.code), "round \(round): unexpected code \(error.code)")
            }
        }
        #expect(delivered > 0)
        #expect(refused > 1000)
    }
}
