import CatenaCore
import Foundation
import Testing

@testable import CatenaCatchUpWire
import CatenaWire

// MARK: - Helpers

/// The kinds of payload a round trip is run on.
enum Payload: Sendable, CustomTestStringConvertible {
    case empty
    case oneByte
    case random(Int)
    case zeros(Int)
    case text(Int)

    var testDescription: String {
        switch self {
        case .empty: "empty"
        case .oneByte: "1 byte"
        case .random(let n): "random \(n) bytes"
        case .zeros(let n): "zeros \(n) bytes"
        case .text(let n): "repetitive text \(n) bytes"
        }
    }

    func bytes(seed: UInt64 = 42) -> [UInt8] {
        switch self {
        case .empty: return []
        case .oneByte: return [0xA7]
        case .random(let n): return randomBytes(n, seed: seed)
        case .zeros(let n): return [UInt8](repeating: 0, count: n)
        case .text(let n): return repetitiveText(n)
        }
    }
}

/// `count` incompressible bytes (generated a word at a time: debug builds are slow per byte).
func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix64(seed: seed)
    var words = [UInt64](repeating: 0, count: (count + 7) / 8)
    for i in words.indices { words[i] = rng.next() }
    return words.withUnsafeBytes { Array($0.prefix(count)) }
}

/// `count` bytes of log-like text: compresses well but is not trivial.
func repetitiveText(_ count: Int) -> [UInt8] {
    var chunk: [UInt8] = []
    for i in 0..<64 {
        chunk += Array("PUT key-\(i * 7919 % 1000) lsn=\(1_000_000 + i) value=object-\(i % 13)\n".utf8)
    }
    var out: [UInt8] = []
    out.reserveCapacity(count + chunk.count)
    while out.count < count { out.append(contentsOf: chunk) }
    out.removeLast(out.count - count)
    return out
}

/// Compares without handing megabytes to `#expect`'s failure description.
func expectSameBytes(_ actual: [UInt8], _ expected: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
    guard actual != expected else { return }
    let firstDifference = zip(actual, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
    Issue.record(
        "bytes differ: actual \(actual.count) bytes, expected \(expected.count) bytes, first difference at \(firstDifference.map(String.init) ?? "end of the shorter one")",
        sourceLocation: sourceLocation
    )
}

/// Feeds `input` to a fresh compressor in random-sized pieces (including empty ones).
func compressInPieces(
    _ input: [UInt8], maxPiece: Int, rng: inout SplitMix64,
    blockSize: LZ4FrameCompressor.BlockSize = .max4MB
) throws -> [UInt8] {
    let compressor = try LZ4FrameCompressor(blockSize: blockSize)
    var frame: [UInt8] = []
    var offset = 0
    while offset < input.count {
        let piece = min(Int.random(in: 0...maxPiece, using: &rng), input.count - offset)
        frame += try input.withUnsafeBytes { try compressor.compress(UnsafeRawBufferPointer(rebasing: $0[offset..<offset + piece])) }
        offset += piece
    }
    frame += try compressor.finish()
    return frame
}

/// Feeds `frame` to a fresh decompressor in random-sized slices, then checks it finished.
func decompressInSlices(_ frame: [UInt8], maxSlice: Int, rng: inout SplitMix64) throws -> [UInt8] {
    let decompressor = LZ4FrameDecompressor()
    var output: [UInt8] = []
    var offset = 0
    while offset < frame.count {
        let slice = min(Int.random(in: 1...maxSlice, using: &rng), frame.count - offset)
        output += try decompressor.decompress(frame[offset..<offset + slice])
        offset += slice
    }
    #expect(decompressor.isFinished)
    try decompressor.finish()
    return output
}

/// Decodes `frame` fully (including `finish()`), returning the error code it fails with.
func corruptionCode(of frame: [UInt8]) -> LZ4FrameError.Code? {
    do {
        let decompressor = LZ4FrameDecompressor()
        _ = try decompressor.decompress(frame)
        try decompressor.finish()
        return nil
    } catch let error as LZ4FrameError {
        return error.code
    } catch {
        Issue.record("unexpected error type: \(error)")
        return nil
    }
}

let corruptionCodes: Set<LZ4FrameError.Code> = [.corruptFrame, .checksumMismatch, .truncatedFrame]

// MARK: - Tests

@Suite("LZ4 frame codec")
struct LZ4FrameTests {
    @Test(
        "round trip: random-sized compressor input, random-sized decoder slices",
        arguments: [
            Payload.empty, .oneByte, .random(1000), .random(300 << 10), .random(5 << 20),
            .zeros(64 << 10), .zeros(20 << 20), .text(1 << 20), .text((4 << 20) + 1), .text(20 << 20),
        ]
    )
    func roundTrip(payload: Payload) throws {
        let input = payload.bytes()
        var rng = SplitMix64(seed: 0xC47E_4A00 &+ UInt64(input.count))
        let frame = try compressInPieces(input, maxPiece: 512 << 10, rng: &rng)
        #expect(Array(frame.prefix(4)) == [0x04, 0x22, 0x4D, 0x18])
        let decoded = try decompressInSlices(frame, maxSlice: 64 << 10, rng: &rng)
        expectSameBytes(decoded, input)
        expectSameBytes(try LZ4Frame.decompress(frame, maxSize: input.count), input)
    }

    @Test("one-shot round trip for every block size and checksum setting")
    func oneShotOptions() throws {
        let input = repetitiveText(300 << 10) + randomBytes(100 << 10, seed: 7)
        for blockSize in LZ4FrameCompressor.BlockSize.allCases {
            for contentChecksum in [false, true] {
                for blockChecksum in [false, true] {
                    for level in [-1, 0, 9] {
                        let frame = try LZ4Frame.compress(
                            input, blockSize: blockSize, level: level,
                            contentChecksum: contentChecksum, blockChecksum: blockChecksum
                        )
                        expectSameBytes(try LZ4Frame.decompress(frame, maxSize: input.count), input)
                    }
                }
            }
        }
    }

    @Test("frame starts with magic 0x184D2204; empty frame is header + end mark + checksum")
    func frameLayout() throws {
        let frame = try LZ4Frame.compress([])
        #expect(Array(frame.prefix(4)) == LZ4Frame.magic)
        #expect(Array(frame.prefix(4)) == [0x04, 0x22, 0x4D, 0x18])
        // 7-byte header (magic, FLG, BD, HC), 4-byte end mark, 4-byte content checksum.
        #expect(frame.count == 15)
        #expect(Array(frame[7..<11]) == [0, 0, 0, 0])
        // FLG: version 01, independent blocks, block checksum, content checksum.
        #expect(frame[4] == 0b0111_0100)
        #expect(try LZ4Frame.decompress(frame, maxSize: 0) == [])
    }

    @Test("the first compress call emits the header even for empty input")
    func headerOnFirstCall() throws {
        let compressor = try LZ4FrameCompressor()
        let first = try compressor.compress([UInt8]())
        #expect(first.count == 7)
        #expect(Array(first.prefix(4)) == LZ4Frame.magic)
        #expect(try compressor.compress([1, 2, 3]) == [])  // buffered until a block fills
        let rest = try compressor.finish()
        // Outputs are exactly sized, not LZ4F_compressBound-sized (which is ~4 MiB here).
        #expect(first.capacity < 4096 && rest.capacity < 4096)
        #expect(try LZ4Frame.decompress(first + rest, maxSize: 3) == [1, 2, 3])
    }

    @Test("flush makes all data given so far decodable while the frame stays open")
    func flush() throws {
        let compressor = try LZ4FrameCompressor()
        let decompressor = LZ4FrameDecompressor()
        let part1 = repetitiveText(10_000)
        let part2 = randomBytes(5000, seed: 3)
        var frame = try compressor.compress(part1)
        frame += try compressor.flush()
        #expect(try decompressor.decompress(frame) == part1)
        #expect(!decompressor.isFinished)
        let tail = try compressor.compress(part2) + compressor.finish()
        #expect(try decompressor.decompress(tail) == part2)
        #expect(decompressor.isFinished)
        try decompressor.finish()
    }

    @Test("decoding drip-fed one byte at a time")
    func dripFed() throws {
        let input = repetitiveText(50_000) + randomBytes(20_000, seed: 9)
        let frame = try LZ4Frame.compress(input, blockSize: .max64KB)
        let decompressor = LZ4FrameDecompressor()
        var output: [UInt8] = []
        for (i, byte) in frame.enumerated() {
            #expect(!decompressor.isFinished, "finished early at byte \(i) of \(frame.count)")
            output += try decompressor.decompress([byte])
        }
        #expect(decompressor.isFinished)
        try decompressor.finish()
        expectSameBytes(output, input)
        #expect(try decompressor.decompress([UInt8]()) == [])  // empty input after the end is fine
    }

    @Test("decoding in random slices, including empty ones")
    func randomSlices() throws {
        let input = randomBytes(200_000, seed: 11) + repetitiveText(600_000)
        let frame = try LZ4Frame.compress(input, blockSize: .max64KB)
        var rng = SplitMix64(seed: 12)
        let decompressor = LZ4FrameDecompressor()
        var output: [UInt8] = []
        var offset = 0
        while offset < frame.count {
            let slice = min(Int.random(in: 0...3000, using: &rng), frame.count - offset)
            output += try decompressor.decompress(frame[offset..<offset + slice])
            offset += slice
        }
        try decompressor.finish()
        expectSameBytes(output, input)
    }

    @Test("a flipped payload byte is detected")
    func flippedPayloadByte() throws {
        let input = repetitiveText(100_000)
        var frame = try LZ4Frame.compress(input)
        frame[frame.count / 2] ^= 0x20
        let code = try #require(corruptionCode(of: frame))
        #expect(corruptionCodes.contains(code), "got \(code)")
        // Content checksum alone (no block checksums) still catches it.
        var frame2 = try LZ4Frame.compress(input, blockChecksum: false)
        frame2[frame2.count / 2] ^= 0x20
        let code2 = try #require(corruptionCode(of: frame2))
        #expect(corruptionCodes.contains(code2), "got \(code2)")
    }

    @Test("a flipped byte in the content checksum is a checksum mismatch naming liblz4's error")
    func flippedContentChecksum() throws {
        var frame = try LZ4Frame.compress(repetitiveText(10_000))
        frame[frame.count - 2] ^= 0x01
        let error = try #require(throws: LZ4FrameError.self) { try LZ4Frame.decompress(frame, maxSize: 1 << 20) }
        #expect(error.code == .checksumMismatch)
        #expect(error.lz4ErrorName == "ERROR_contentChecksum_invalid")
        #expect(error.message.contains("ERROR_contentChecksum_invalid"))
        #expect(String(describing: error).contains("checksumMismatch"))
    }

    @Test("every single-byte corruption of a small frame is detected or harmless")
    func everyByteFlipDetected() throws {
        let input = repetitiveText(3000) + randomBytes(500, seed: 5)
        for blockChecksum in [false, true] {
            let frame = try LZ4Frame.compress(input, blockSize: .max64KB, blockChecksum: blockChecksum)
            var undetected = 0
            for index in frame.indices {
                for mask: UInt8 in [0x01, 0x80, 0xFF] {
                    var corrupted = frame
                    corrupted[index] ^= mask
                    let context = "blockChecksum \(blockChecksum): flip \(mask) at \(index)/\(frame.count)"
                    do {
                        let decoded = try LZ4Frame.decompress(corrupted, maxSize: 1 << 20)
                        // Only possible without block checksums: a flipped match offset that points
                        // at an identical earlier occurrence re-encodes the same content, which the
                        // content checksum then (rightly) accepts. Wrong data must never come out.
                        #expect(!blockChecksum, "\(context) was not detected")
                        #expect(decoded == input, "\(context) decoded to different content")
                        undetected += 1
                    } catch let error as LZ4FrameError {
                        #expect(corruptionCodes.contains(error.code), "\(context) gave \(error)")
                    }
                }
            }
            #expect(undetected <= 3, "blockChecksum \(blockChecksum): \(undetected) harmless flips")
        }
    }

    @Test("bad magic and skippable frames are rejected")
    func badMagic() throws {
        var frame = try LZ4Frame.compress([1, 2, 3])
        frame[0] = 0x05
        #expect(corruptionCode(of: frame) == .corruptFrame)
        // Skippable frame (magic 0x184D2A50): liblz4 would accept it, we want one real frame.
        let skippable: [UInt8] = [0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0]
        #expect(corruptionCode(of: skippable) == .corruptFrame)
        // Detected on the first wrong byte even when drip-fed.
        let decompressor = LZ4FrameDecompressor()
        _ = try decompressor.decompress([0x04, 0x22])
        #expect(throws: LZ4FrameError.self) { try decompressor.decompress([0x4E]) }
        #expect(throws: LZ4FrameError.self) { try decompressor.finish() }  // stays failed
    }

    @Test("every truncation makes finish() throw truncatedFrame")
    func truncatedFrame() throws {
        let input = repetitiveText(20_000)
        let frame = try LZ4Frame.compress(input, blockSize: .max64KB)
        for length in 0..<frame.count {
            let decompressor = LZ4FrameDecompressor()
            _ = try decompressor.decompress(frame[0..<length])
            #expect(!decompressor.isFinished)
            let error = try #require(throws: LZ4FrameError.self) { try decompressor.finish() }
            #expect(error.code == .truncatedFrame, "length \(length)")
        }
        let error = try #require(throws: LZ4FrameError.self) {
            try LZ4Frame.decompress(Array(frame.dropLast()), maxSize: input.count)
        }
        #expect(error.code == .truncatedFrame)
    }

    @Test("trailing bytes after the frame are rejected")
    func trailingGarbage() throws {
        let input = repetitiveText(5000)
        let frame = try LZ4Frame.compress(input)
        // In the same call as the end of the frame.
        let error = try #require(throws: LZ4FrameError.self) {
            try LZ4Frame.decompress(frame + [0x00], maxSize: 1 << 20)
        }
        #expect(error.code == .corruptFrame)
        // In a later call.
        let decompressor = LZ4FrameDecompressor()
        #expect(try decompressor.decompress(frame) == input)
        #expect(decompressor.isFinished)
        let later = try #require(throws: LZ4FrameError.self) { try decompressor.decompress([0x04]) }
        #expect(later.code == .corruptFrame)
        // A second frame is not accepted either.
        #expect(corruptionCode(of: frame + frame) == .corruptFrame)
    }

    @Test("output limits are enforced")
    func outputLimit() throws {
        let input = [UInt8](repeating: 7, count: 1 << 20)
        let frame = try LZ4Frame.compress(input)
        let oneShot = try #require(throws: LZ4FrameError.self) {
            try LZ4Frame.decompress(frame, maxSize: input.count - 1)
        }
        #expect(oneShot.code == .outputLimitExceeded)
        expectSameBytes(try LZ4Frame.decompress(frame, maxSize: input.count), input)

        let decompressor = LZ4FrameDecompressor(maxOutputPerCall: 64 << 10)
        let streaming = try #require(throws: LZ4FrameError.self) { try decompressor.decompress(frame) }
        #expect(streaming.code == .outputLimitExceeded)
        #expect(throws: LZ4FrameError.self) { try decompressor.decompress([UInt8]()) }  // stays failed
    }

    @Test("the compressor rejects use after finish()")
    func compressorAlreadyFinished() throws {
        let compressor = try LZ4FrameCompressor()
        _ = try compressor.compress([1, 2, 3])
        _ = try compressor.finish()
        let again = try #require(throws: LZ4FrameError.self) { try compressor.compress([4]) }
        #expect(again.code == .alreadyFinished)
        let twice = try #require(throws: LZ4FrameError.self) { try compressor.finish() }
        #expect(twice.code == .alreadyFinished)
    }

    @Test(
        "interop with the lz4 command-line tool",
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: "/usr/bin/lz4"),
            "skipped: /usr/bin/lz4 is not installed (apt-get install lz4)"
        )
    )
    func interopWithLZ4CLI() throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("catena-lz4-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        let input = repetitiveText(3 << 20) + randomBytes(1 << 20, seed: 21)
        let plain = directory.appendingPathComponent("plain")
        let theirs = directory.appendingPathComponent("theirs.lz4")
        let ours = directory.appendingPathComponent("ours.lz4")
        let roundTripped = directory.appendingPathComponent("roundtripped")
        try Data(input).write(to: plain)

        func lz4(_ arguments: [String]) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/lz4")
            process.arguments = ["-q", "-f"] + arguments
            try process.run()
            process.waitUntilExit()
            #expect(process.terminationStatus == 0, "lz4 \(arguments.joined(separator: " ")) failed")
        }

        // Their frame (default: 4 MiB linked blocks, content checksum), decoded by us.
        try lz4([plain.path, theirs.path])
        let theirFrame = [UInt8](try Data(contentsOf: theirs))
        expectSameBytes(try LZ4Frame.decompress(theirFrame, maxSize: input.count), input)
        // With block checksums, 64 KiB blocks and the content size in the header.
        try lz4(["-B4", "-BX", "--content-size", plain.path, theirs.path])
        let theirFrame2 = [UInt8](try Data(contentsOf: theirs))
        expectSameBytes(try LZ4Frame.decompress(theirFrame2, maxSize: input.count), input)

        // Our frame, decoded by them.
        var rng = SplitMix64(seed: 22)
        try Data(try compressInPieces(input, maxPiece: 100_000, rng: &rng, blockSize: .max256KB)).write(to: ours)
        try lz4(["-d", ours.path, roundTripped.path])
        expectSameBytes([UInt8](try Data(contentsOf: roundTripped)), input)
    }

    @Test func requiredContentChecksum() throws {
        let payload = Array("catch-up needs end-to-end checksums".utf8)
        let without = try LZ4Frame.compress(payload, contentChecksum: false)
        let with = try LZ4Frame.compress(payload, contentChecksum: true)
        let strict = LZ4FrameDecompressor(requireContentChecksum: true)
        // Fed one byte at a time, so the descriptor arrives in its own call.
        do {
            for b in without { _ = try strict.decompress([b]) }
            Issue.record("a frame without a content checksum was accepted")
        } catch let error as LZ4FrameError {
            #expect(error.code == .missingContentChecksum)
        }
        let ok = LZ4FrameDecompressor(requireContentChecksum: true)
        var out: [UInt8] = []
        for b in with { out += try ok.decompress([b]) }
        try ok.finish()
        #expect(out == payload)
        // Without the requirement, both decode.
        #expect(try LZ4Frame.decompress(without, maxSize: 1 << 20) == payload)
    }
}
