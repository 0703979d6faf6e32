import CatenaCore
import CatenaWire
import NIOCore
import Testing

private typealias F = MessageFixtures

/// What a decoder made of many inputs.
private struct FuzzTally {
    var accepted = 0
    var refused: [CatenaError.Code: Int] = [:]
    /// Inputs refused with a code the decoder does not document, or accepted as a value that does
    /// not re-encode stably (first few, for the failure message).
    var problems: [String] = []
    var problemCount = 0

    mutating func feed(_ bytes: [UInt8], to codec: PayloadCodec) {
        let canonical: ByteBuffer
        do {
            canonical = try codec.canonical(ByteBuffer(bytes: bytes))
        } catch {
            refused[error.code, default: 0] += 1
            if !codec.codes.contains(error.code) { problem("\(bytes.prefix(64)): unexpected code \(error.code)") }
            return
        }
        accepted += 1
        // A decoded value must survive encoding and decoding again unchanged.
        do {
            let again = try codec.canonical(canonical)
            if again != canonical { problem("\(bytes.prefix(64)): re-encoding is not stable") }
        } catch {
            problem("\(bytes.prefix(64)): its own re-encoding is refused with \(error)")
        }
    }

    private mutating func problem(_ text: String) {
        problemCount += 1
        if problems.count < 5 { problems.append(text) }
    }

    var refusedCount: Int { refused.values.reduce(0, +) }
}

/// A seed of its own for each decoder, stable across runs.
private func seed(_ name: String, _ salt: UInt64) -> UInt64 {
    name.utf8.reduce(salt) { $0 &* 0x100_0000_01B3 ^ UInt64($1) }
}

@Suite("Message payload fuzzing")
struct MessageFuzzTests {

    @Test("Random bytes: refused with the decoder's own codes, or decoded to a value that re-encodes stably",
          .timeLimit(.minutes(1)), arguments: MessageFixtures.codecs)
    func randomBytes(_ codec: PayloadCodec) {
        var rng = SplitMix64(seed: seed(codec.name, 0xF022))
        var tally = FuzzTally()
        for round in 0..<1500 {
            let bytes: [UInt8]
            switch round % 3 {
            case 0:
                bytes = F.random(Int.random(in: 0...24, using: &rng), &rng)
            case 1:
                bytes = F.random(Int.random(in: 0...400, using: &rng), &rng)
            default:
                // A valid beginning and a random rest, to get past the first fields.
                let sample = F.bytes(codec.samples.randomElement(using: &rng)!)
                bytes = Array(sample.prefix(Int.random(in: 0...sample.count, using: &rng)))
                    + F.random(Int.random(in: 1...64, using: &rng), &rng)
            }
            tally.feed(bytes, to: codec)
        }
        #expect(tally.problemCount == 0, "\(tally.problemCount) problems, e.g. \(tally.problems)")
        #expect(tally.accepted + tally.refusedCount == 1500)
        #expect(tally.refused[.malformed, default: 0] > 0, "random bytes include truncated ones")
    }

    @Test("Mutated valid payloads: refused with the decoder's own codes, or decoded to a value that re-encodes stably",
          .timeLimit(.minutes(1)), arguments: MessageFixtures.codecs)
    func mutatedPayloads(_ codec: PayloadCodec) {
        var rng = SplitMix64(seed: seed(codec.name, 0xB17F))
        var tally = FuzzTally()
        for _ in 0..<2000 {
            let sample = F.bytes(codec.samples.randomElement(using: &rng)!)
            tally.feed(F.mutated(sample, &rng), to: codec)
        }
        #expect(tally.problemCount == 0, "\(tally.problemCount) problems, e.g. \(tally.problems)")
        #expect(tally.accepted + tally.refusedCount == 2000)
        #expect(tally.refusedCount > 100, "mutations are mostly noticed: \(tally.refused)")
    }

    @Test("Mutated records with recomputed checksums: replication refuses them with record codes, never traps",
          .timeLimit(.minutes(1)))
    func resealedRecords() {
        let codec = MessageFixtures.codecs.first { $0.name == "replicate" }!
        var rng = SplitMix64(seed: 0x5EA1)
        var tally = FuzzTally()
        for _ in 0..<2000 {
            let record = F.records.randomElement(using: &rng)!.bytes
            var mutated = F.mutated(record, &rng)
            // Mostly leave the length alone, so the record gets past its framing to its contents.
            if Int.random(in: 0..<4, using: &rng) > 0 {
                mutated = Array(mutated.prefix(record.count)) + Array(repeating: 0, count: max(0, record.count - mutated.count))
            }
            tally.feed(F.bytes(F.replicatePayload([F.resealed(mutated)])), to: codec)
        }
        #expect(tally.problemCount == 0, "\(tally.problemCount) problems, e.g. \(tally.problems)")
        // The checksums are right, so the fuzz reaches the checks behind them.
        for code in [CatenaError.Code.malformed, .unknownRecordType, .invalidKey, .unsupportedVersion] {
            #expect(tally.refused[code, default: 0] > 0, "no record refused with \(code): \(tally.refused)")
        }
    }
}
