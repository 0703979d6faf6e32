import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Testing

/// The store's scrub (`Store.scrub`): every live key, in key order, with its version, read back
/// from disk and checked — so damage start-up never read (a value under a valid hint) is found.
@Suite("Scrub")
struct ScrubTests {
    typealias C = CorruptionTests

    /// Every page of a scrub from the start.
    static func scrubAll(_ store: Store, prefix: [UInt8] = [], limit: Int = 256, maxBytes: UInt64 = 16 << 20) async throws -> [ScrubPage] {
        var pages: [ScrubPage] = []
        var after: Key?
        repeat {
            let page = try await store.scrub(prefix: prefix, after: after, limit: limit, maxBytes: maxBytes)
            pages.append(page)
            if let next = page.nextCursor, let previous = after { #expect(previous < next, "the cursor moves on") }
            after = page.nextCursor
        } while after != nil && pages.count < 10_000
        return pages
    }

    /// 4 KiB segments: k1 ... k30 (150 bytes each), k7 overwritten, k5 deleted, and a chunked
    /// object `big` of 5 chunks.
    static func mixedStore(_ fs: CrashSimulatingFileSystem) async throws -> (Store, [String: [UInt8]]) {
        let store = try await C.fixture(fs, segmentSize: 4096).open()
        var seq: UInt64 = 0
        var model: [String: [UInt8]] = [:]
        for i in 1...30 {
            seq += 1
            let v = C.value(seq, 150)
            try await store.append([put("k\(i)", v, seq: seq)])
            model["k\(i)"] = v
        }
        seq += 1
        model["k7"] = C.value(seq, 99)
        try await store.append([put("k7", model["k7"]!, seq: seq)])
        seq += 1
        try await store.append([del("k5", seq: seq)])
        model["k5"] = nil
        let upload = RequestID(high: 7, low: 7)
        let object = C.value(999, 5 * 700)
        for i in 0..<5 {
            seq += 1
            try await store.append([chunk("big", upload: upload, index: UInt32(i), value: Array(object[(i * 700)..<((i + 1) * 700)]), seq: seq)])
        }
        seq += 1
        let manifest = Record(type: .manifest, key: key("big"), lsn: LSN(epoch: 1, seq: seq), contentChecksum: XXH3.hash(object),
                              value: Manifest(upload: upload, chunkCount: 5, totalSize: UInt64(object.count)).encoded())
        try await store.append([try manifest.encoded()])
        model["big"] = object
        return (store, model)
    }

    @Test func pagesMoveOnOverManyKeysWithDeletesAndRewrites() async throws {
        let fs = CrashSimulatingFileSystem()
        let store = try await C.fixture(fs).open()
        var seq: UInt64 = 0
        var live = Set<String>()
        func name(_ i: Int) -> String { "bench/" + String(repeating: "0", count: 8 - String(i).count) + String(i) }
        for i in 0..<3000 {
            seq += 1
            try await store.append([put(name(i), C.value(seq, 64), seq: seq)])
            live.insert(name(i))
        }
        var random = SplitMix64(seed: 5)
        for _ in 0..<3000 {
            let i = Int(random.next() % 3000)
            seq += 1
            if random.next() % 10 == 0 {
                try await store.append([del(name(i), seq: seq)])
                live.remove(name(i))
            } else {
                try await store.append([put(name(i), C.value(seq, 64), seq: seq)])
                live.insert(name(i))
            }
        }
        let entries = try await Self.scrubAll(store, limit: 256).flatMap(\.entries)
        #expect(entries.map(\.key.string) == live.sorted())
        await store.close()
    }

    @Test func aCleanStoreScrubsEveryLiveKeyInKeyOrderWithItsVersion() async throws {
        let fs = CrashSimulatingFileSystem()
        let (store, model) = try await Self.mixedStore(fs)
        for limit in [1, 7, 256] {
            let pages = try await Self.scrubAll(store, limit: limit)
            let entries = pages.flatMap(\.entries)
            #expect(entries.map(\.key.string) == model.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }, "limit \(limit)")
            #expect(pages.allSatisfy { $0.entries.count <= limit })
            #expect(pages.dropLast().allSatisfy { $0.nextCursor == $0.entries.last?.key })
            for e in entries {
                let info = try #require(try store.head(e.key))
                #expect(e.problem == nil, "\(e.key): \(e.problem ?? "")")
                #expect(e.lsn == info.lsn && e.size == info.size && e.contentChecksum == info.contentChecksum, "\(e.key)")
            }
            // Every byte of every live object was read, the chunked one through its 5 chunks.
            #expect(pages.reduce(0) { $0 + $1.bytesRead } == model.values.reduce(0) { $0 + UInt64($1.count) })
            #expect(pages.allSatisfy { $0.damage.isEmpty })
        }
        let prefixed = try await Self.scrubAll(store, prefix: Array("k2".utf8), limit: 3).flatMap(\.entries)
        #expect(prefixed.map(\.key.string) == ["k2"] + (20...29).map { "k\($0)" })
        // A re-check asks for one key: that key as the prefix, limit 1.
        let one = try await store.scrub(prefix: Array("k7".utf8), limit: 1)
        #expect(one.entries.map(\.key.string) == ["k7"] && one.entries[0].size == 99)
        await store.close()
    }

    @Test func aFlippedByteUnderAValidHintIsFoundAndNamedByItsKey() async throws {
        let (golden, segments, _) = try await C.sealedGolden()
        let fs = try C.clone(golden)
        let (segment, newest) = try C.sealedSegment(holding: 20, in: segments)  // k20's only version
        let (segment18, overwritten) = try C.sealedSegment(holding: 18, in: segments)  // k18's old version, overwritten by seq 40
        C.flip(fs, segment.path, at: newest.valueOffset + 33)
        C.flip(fs, segment18.path, at: overwritten.valueOffset + 3)
        let store = try await C.fixture(fs, segmentSize: 4096).open()
        // Start-up trusted the hints: it read no value and found nothing; the index serves k20.
        #expect(store.damage.isEmpty)
        #expect(try store.head(key("k20")) != nil)
        let pages = try await Self.scrubAll(store, limit: 10)
        let entries = pages.flatMap(\.entries)
        #expect(entries.count == 39)
        let bad = entries.filter { $0.problem != nil }
        #expect(bad.map(\.key.string) == ["k20"], "only the live version read back damaged: \(bad)")
        #expect(bad.first?.lsn == newest.record.lsn)
        #expect(bad.first?.problem?.contains("checksum") == true, "\(bad.first?.problem ?? "")")
        // The overwritten version is no object any more: k18 is its newer version, intact.
        #expect(entries.first { $0.key.string == "k18" }?.lsn.seq == 40)
        await store.close()
    }

    @Test func theByteBudgetCutsPagesButEveryPageHoldsAKey() async throws {
        let (golden, _, all) = try await C.sealedGolden()
        let store = try await C.fixture(try C.clone(golden), segmentSize: 4096).open()
        let keys = model(all).keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        // 150-byte objects: a budget of 1 or 200 bytes takes one key a page, 450 three.
        for (budget, perPage) in [(UInt64(1), 1), (200, 1), (450, 3)] {
            let pages = try await Self.scrubAll(store, limit: 1000, maxBytes: budget)
            #expect(pages.flatMap(\.entries).map(\.key.string) == keys, "budget \(budget)")
            #expect(pages.dropLast().allSatisfy { $0.entries.count == perPage }, "budget \(budget)")
            #expect(pages.allSatisfy { $0.bytesRead <= max(budget, 150) })
        }
        await store.close()
    }

    @Test func damageFoundAtStartUpIsOnTheFirstPageAndItsKeyIsCorrupt() async throws {
        let (golden, segments, _) = try await C.sealedGolden()
        let fs = try C.clone(golden)
        let (segment, newest) = try C.sealedSegment(holding: 20, in: segments)
        C.flip(fs, segment.path, at: newest.valueOffset + 5)
        try fs.remove(C.hintPath(of: segment.path))  // start-up scans the segment and finds it
        let store = try await C.fixture(fs, segmentSize: 4096).open()
        #expect(store.damage.count == 1)
        let pages = try await Self.scrubAll(store, limit: 5)
        #expect(pages.first?.damage.count == 1)
        #expect(pages.first?.damage.first?.contains(segment.path) == true)
        #expect(pages.dropFirst().allSatisfy { $0.damage.isEmpty }, "only the first page carries the damage")
        let bad = pages.flatMap(\.entries).filter { $0.problem != nil }
        #expect(bad.map(\.key.string) == ["k20"])
        #expect(bad.first?.problem?.contains("found at start-up") == true, "\(bad.first?.problem ?? "")")
        await store.close()
    }

    @Test func aDamagedChunkMakesItsObjectCorrupt() async throws {
        let golden = CrashSimulatingFileSystem()
        let (store, _) = try await Self.mixedStore(golden)
        await store.close()
        let fs = try C.clone(golden)
        // A chunk of `big` in a sealed segment (its hint left valid).
        let segments = try C.segmentFiles(fs)
        let chunks = segments.dropLast().flatMap { s in s.records.filter { $0.record.type == .chunk }.map { (s, $0) } }
        let (segment, placed) = try #require(chunks.first, "a chunk in a sealed segment")
        C.flip(fs, segment.path, at: placed.valueOffset + 10)
        let reopened = try await C.fixture(fs, segmentSize: 4096).open()
        #expect(reopened.damage.isEmpty)
        let bad = try await Self.scrubAll(reopened).flatMap(\.entries).filter { $0.problem != nil }
        #expect(bad.map(\.key.string) == ["big"])
        await reopened.close()
    }
}
