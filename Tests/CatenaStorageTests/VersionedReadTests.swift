import CatenaCore
@testable import CatenaStorage
import CatenaTestSupport
import Testing

/// An LSN of epoch 1.
private func lsn(_ seq: UInt64) -> LSN { LSN(epoch: 1, seq: seq) }

/// `n` bytes that spell `tag` over and over (a value that can be found in a segment file).
private func padded(_ tag: String, _ n: Int) -> [UInt8] {
    let unit = bytes(tag)
    return (0..<n).map { unit[$0 % unit.count] }
}

private func isCode(_ code: CatenaError.Code) -> (any Error) -> Bool {
    { ($0 as? CatenaError)?.code == code }
}

extension Store {
    /// The bytes of `k` at `version` (nil: the newest), or nil for a delete or no version.
    fileprivate func bytes(_ k: String, at version: LSN?, range: Range<UInt64>? = nil) async throws -> [UInt8]? {
        guard let object = try read(key(k), range: range, at: version).object else { return nil }
        return try await object.bytes()
    }
}

/// CRAQ reads: the store keeps, per key, the newest version at or below the commit hint and
/// every newer one, and serves any of them by LSN.
@Suite("Versioned reads")
struct VersionedReadTests {
    @Test func anOverwrittenKeyServesItsOlderVersionUntilTheCommitHintPassesTheOverwrite() async throws {
        let store = try await Fixture().open()
        try await store.append([put("a", bytes("one"), seq: 1)])
        try await store.append([put("a", bytes("two"), seq: 2)])
        #expect(store.olderVersionCount == 1)

        let newest = try store.read(key("a"))
        #expect(newest.lsn == lsn(2))
        #expect(try await newest.object?.bytes() == bytes("two"))
        #expect(try await store.bytes("a", at: lsn(1)) == bytes("one"))
        #expect(try await store.bytes("a", at: lsn(2)) == bytes("two"))
        #expect(try store.read(key("a"), at: lsn(1)).lsn == lsn(1))
        let info = try store.readInfo(key("a"), at: lsn(1))
        #expect(info.lsn == lsn(1))
        #expect(info.info?.size == 3)
        #expect(info.info?.contentChecksum == XXH3.hash(bytes("one")))
        // The version is the exact LSN: another epoch's seq 1, or a version never written, is not it.
        #expect { try store.read(key("a"), at: LSN(epoch: 2, seq: 1)) } throws: { isCode(.unavailable)($0) }
        #expect { try store.read(key("a"), at: lsn(3)) } throws: { isCode(.unavailable)($0) }
        #expect { try store.readInfo(key("never"), at: lsn(1)) } throws: { isCode(.unavailable)($0) }
        let never = try store.read(key("never"))
        #expect(never.lsn == nil && never.object == nil)
        // get, head and version(of:) still read the newest.
        #expect(try await store.value("a") == bytes("two"))
        #expect(try store.head(key("a"))?.lsn == lsn(2))
        #expect(try store.version(of: key("a"))?.lsn == lsn(2))

        // The chain commits seq 2: once the store indexes records again, version 1 is gone.
        store.noteCommitted(through: lsn(2))
        try await store.append([put("b", bytes("x"), seq: 3)])
        #expect(store.olderVersionCount == 0)
        #expect { try store.read(key("a"), at: lsn(1)) } throws: { isCode(.unavailable)($0) }
        #expect(try await store.bytes("a", at: lsn(2)) == bytes("two"))
        // An overwrite at or below the hint keeps nothing.
        store.noteCommitted(through: lsn(4))
        try await store.append([put("a", bytes("four"), seq: 4)])
        #expect(store.olderVersionCount == 0)
        #expect { try store.read(key("a"), at: lsn(2)) } throws: { isCode(.unavailable)($0) }
        await store.close()
    }

    /// The older versions held are exactly those from the newest one at or below the hint on:
    /// a hint lagging 10 seqs behind a key overwritten 100 times holds 10 of them, not 99.
    @Test func theOlderVersionsHeldAreBoundedByTheOverwritesAboveTheHint() async throws {
        let store = try await Fixture().open()
        for n in UInt64(1)...100 {
            store.noteCommitted(through: lsn(n > 10 ? n - 10 : 0))
            try await store.append([put("hot", bytes("v\(n)"), seq: n)])
        }
        #expect(store.olderVersionCount == 10)
        for n in UInt64(90)...100 {
            #expect(try await store.bytes("hot", at: lsn(n)) == bytes("v\(n)"))
        }
        #expect { try store.read(key("hot"), at: lsn(89)) } throws: { isCode(.unavailable)($0) }
        // The hint may go down (a node rebuilding its replica machine): overwrites are kept again.
        store.noteCommitted(through: .zero)
        try await store.append([put("hot", bytes("v101"), seq: 101)])
        #expect(store.olderVersionCount == 11)
        #expect(try await store.bytes("hot", at: lsn(100)) == bytes("v100"))
        // The persisted watermark counts as committed whatever was noted.
        try await store.setCommitWatermark(lsn(101))
        #expect(store.olderVersionCount == 0)
        #expect { try store.read(key("hot"), at: lsn(100)) } throws: { isCode(.unavailable)($0) }
        await store.close()
    }

    /// A delete not yet committed: the newest read names the tombstone (not "absent"), and the
    /// put before it is still served at its LSN.
    @Test func aDirtyDeleteReportsItsTombstoneAndKeepsThePutBeforeIt() async throws {
        let store = try await Fixture().open()
        try await store.append([put("a", bytes("v1"), seq: 1)])
        store.noteCommitted(through: lsn(1))
        try await store.append([del("a", seq: 2)])

        let newest = try store.read(key("a"))
        #expect(newest.lsn == lsn(2))
        #expect(newest.object == nil)
        let newestInfo = try store.readInfo(key("a"))
        #expect(newestInfo.lsn == lsn(2) && newestInfo.info == nil)
        #expect(try store.get(key("a")) == nil)
        #expect(try store.head(key("a")) == nil)
        #expect(try await store.bytes("a", at: lsn(1)) == bytes("v1"))
        let tombstone = try store.read(key("a"), at: lsn(2))
        #expect(tombstone.lsn == lsn(2) && tombstone.object == nil)

        // Written again, still above the hint: the put and the tombstone are both kept.
        try await store.append([put("a", bytes("v3"), seq: 3)])
        #expect(try await store.bytes("a", at: lsn(1)) == bytes("v1"))
        #expect(try store.readInfo(key("a"), at: lsn(2)).lsn == lsn(2))
        #expect(try store.readInfo(key("a"), at: lsn(2)).info == nil)
        #expect(try await store.bytes("a", at: nil) == bytes("v3"))
        await store.close()
    }

    /// A chunked object overwritten above the hint: its manifest version is read whole and in
    /// ranges at its LSN; a single-record version too, with the range checks of `get`.
    @Test func olderChunkedAndSingleRecordVersionsReadWholeAndInRanges() async throws {
        let store = try await Fixture().open()
        var rng = SplitMix64(seed: 41)
        let object = (0..<(3 * 4096 + 100)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        try await RangedReadTests.appendChunked(object, as: "big", chunk: 4096, to: store, firstSeq: 1)  // chunks 1-4, manifest 5
        try await store.append([put("big", bytes("small now"), seq: 6)])
        try await store.append([put("r", bytes("0123456789"), seq: 7)])
        try await store.append([put("r", bytes("abc"), seq: 8)])
        #expect(store.olderVersionCount == 2)

        let info = try #require(try store.readInfo(key("big"), at: lsn(5)).info)
        #expect(info.chunkCount == 4)
        #expect(info.size == UInt64(object.count))
        #expect(try await store.bytes("big", at: lsn(5)) == object)
        #expect(try await store.bytes("big", at: lsn(5), range: 4000..<8300) == Array(object[4000..<8300]))
        #expect(try await store.bytes("big", at: nil) == bytes("small now"))

        #expect(try await store.bytes("r", at: lsn(7), range: 2..<5) == bytes("234"))
        #expect(try await store.bytes("r", at: lsn(7), range: 8..<100) == bytes("89"))
        #expect(try await store.bytes("r", at: lsn(8), range: 1..<100) == bytes("bc"))
        // Past the end of the version read (not of the newest, which is shorter).
        #expect { try store.read(key("r"), range: 11..<12, at: lsn(7)) } throws: { isCode(.invalidArgument)($0) }
        #expect(try await store.bytes("r", at: lsn(7), range: 5..<5) == [])
        await store.close()
    }

    /// Compaction moves the committed version of a key overwritten above the watermark (a put,
    /// and a manifest with its chunks): the version is still read at its LSN, from its new place.
    @Test func compactionMovesTheCommittedOlderVersionAndItIsStillReadable() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096; $0.requestWindow = .zero })
        let store = try await f.open()
        var seq: UInt64 = 0
        func next() -> UInt64 { seq += 1; return seq }
        // Each record of the versions read below is followed by an overwrite of "dead", so every
        // segment that holds one of them also holds dead records: compaction rewrites it.
        func dead() async throws { try await store.append([put("dead", padded("dead\(seq).", 200), seq: next())]) }
        let v1 = padded("k-one.", 500)
        let kSeq = next()
        try await store.append([put("k", v1, seq: kSeq)])
        try await dead()
        var rng = SplitMix64(seed: 42)
        let chunked = (0..<3000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let upload = RequestID(high: 42, low: 42)
        for i in 0..<3 {
            try await store.append([chunk("big", upload: upload, index: UInt32(i), value: Array(chunked[(i * 1000)..<((i + 1) * 1000)]), seq: next())])
            try await dead()
        }
        let manifestSeq = next()
        let manifest = Record(type: .manifest, key: key("big"), lsn: lsn(manifestSeq), contentChecksum: XXH3.hash(chunked),
                              value: Manifest(upload: upload, chunkCount: 3, totalSize: UInt64(chunked.count)).encoded())
        try await store.append([try manifest.encoded()])
        try await dead()
        try await store.setCommitWatermark(store.highestLSN)
        try await store.append([put("k", bytes("k two"), seq: next())])
        let bigOverwrite = next()
        try await store.append([put("big", bytes("big two"), seq: bigOverwrite)])
        for i in 0..<10 { try await store.append([put("more\(i)", padded("m\(i).", 500), seq: next())]) }
        #expect(store.olderVersionCount == 2)
        let holding = Set(store.segments.filter { $0.firstLSN.seq <= manifestSeq + 1 }.map(\.id))
        try #require(holding.count >= 2)

        let report = try await store.compact()
        #expect(report.segmentsRewritten > 0 && report.recordsDropped > 0)
        // Every segment that held the versions was rewritten (and its file removed).
        #expect(!store.segments.contains { holding.contains($0.id) })
        #expect(try await store.bytes("k", at: lsn(kSeq)) == v1)
        #expect(try await store.bytes("big", at: lsn(manifestSeq)) == chunked)
        #expect(try await store.bytes("big", at: lsn(manifestSeq), range: 999..<2001) == Array(chunked[999..<2001]))
        #expect(try await store.bytes("k", at: nil) == bytes("k two"))
        #expect(try await store.bytes("big", at: lsn(bigOverwrite)) == bytes("big two"))

        // Once the watermark passes the overwrites, the older versions go.
        try await store.setCommitWatermark(store.highestLSN)
        #expect(store.olderVersionCount == 0)
        #expect { try store.read(key("k"), at: lsn(kSeq)) } throws: { isCode(.unavailable)($0) }
        await store.close()
    }

    /// Start-up rebuilds the index with the persisted watermark as its hint: the versions above
    /// it are read at their LSNs after a reopen, the ones it passed are not.
    @Test func versionsAboveThePersistedWatermarkSurviveAReopen() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096 })
        let store = try await f.open()
        for (seq, k) in [(1, "a"), (2, "a")] as [(UInt64, String)] {
            try await store.append([put(k, padded("\(k)\(seq).", 900), seq: seq)])
        }
        try await store.setCommitWatermark(lsn(2))
        try await store.append([put("a", padded("a3.", 900), seq: 3)])
        try await store.append([put("a", padded("a4.", 900), seq: 4)])
        try await store.append([put("b", padded("b5.", 900), seq: 5)])
        try await store.append([del("b", seq: 6)])
        await store.close()

        let reopened = try await f.open()
        #expect(reopened.segments.count > 1)  // sealed segments load from their hints
        #expect(reopened.olderVersionCount == 3)
        #expect(try await reopened.bytes("a", at: lsn(2)) == padded("a2.", 900))
        #expect(try await reopened.bytes("a", at: lsn(3)) == padded("a3.", 900))
        #expect(try await reopened.bytes("a", at: nil) == padded("a4.", 900))
        #expect { try reopened.read(key("a"), at: lsn(1)) } throws: { isCode(.unavailable)($0) }
        #expect(try await reopened.bytes("b", at: lsn(5)) == padded("b5.", 900))
        let b = try reopened.read(key("b"))
        #expect(b.lsn == lsn(6) && b.object == nil)
        await reopened.close()
    }

    /// A truncation rebuilds the index from what is left: the versions it removed are gone,
    /// the older ones above the watermark are kept, and reads go on.
    @Test func aTruncationForgetsTheVersionsItRemoved() async throws {
        let store = try await Fixture().open()
        for seq in UInt64(1)...3 { try await store.append([put("a", bytes("a\(seq)"), seq: seq)]) }
        #expect(store.olderVersionCount == 2)
        try await store.truncate(after: lsn(2))
        #expect(try store.read(key("a")).lsn == lsn(2))
        #expect(try await store.bytes("a", at: lsn(1)) == bytes("a1"))
        #expect { try store.read(key("a"), at: lsn(3)) } throws: { isCode(.unavailable)($0) }
        #expect(store.olderVersionCount == 1)
        try await store.append([put("a", bytes("a3 again"), seq: 3, epoch: 2)])
        #expect(try await store.bytes("a", at: LSN(epoch: 2, seq: 3)) == bytes("a3 again"))
        #expect { try store.read(key("a"), at: lsn(3)) } throws: { isCode(.unavailable)($0) }
        await store.close()
    }

    /// A damaged older version is refused at its LSN, while the newest is served; a version
    /// that may lie in records whose header was lost is refused too, not called unavailable.
    @Test func aDamagedOlderVersionIsRefusedAtItsLSN() async throws {
        let fs = CrashSimulatingFileSystem()
        let store = try await CorruptionTests.fixture(fs).open()
        let plan: [(String, String)] = [("y", "y1"), ("y", "y2"), ("y", "y3"), ("x", "x1"), ("x", "x2"), ("z", "z1")]
        for (i, (k, v)) in plan.enumerated() {
            try await store.append([put(k, padded(v + ".", 60), seq: UInt64(i + 1))])
        }
        await store.close()
        let segment = try #require(try CorruptionTests.segmentFiles(fs).first)
        try #require(segment.records.count == 6)
        CorruptionTests.flip(fs, segment.path, at: segment.records[1].offset + 8)       // y2's header
        CorruptionTests.flip(fs, segment.path, at: segment.records[3].valueOffset + 3)  // x1's value

        let reopened = try await CorruptionTests.fixture(fs).open()
        #expect(reopened.damage.count == 2)
        #expect(reopened.damage.contains { $0.lostSeqs == 2...2 })
        // x1 is damaged: refused at its LSN (not served to fail later); x2 is served.
        #expect { try reopened.read(key("x"), at: lsn(4)) } throws: { isCode(.corruption)($0) }
        #expect { try reopened.readInfo(key("x"), at: lsn(4)) } throws: { isCode(.corruption)($0) }
        #expect(try await reopened.bytes("x", at: nil) == padded("x2.", 60))
        #expect(try await reopened.bytes("x", at: lsn(5)) == padded("x2.", 60))
        // y2's record is unreadable: at its LSN y is refused as damaged; y1 and y3 are served.
        #expect { try reopened.read(key("y"), at: lsn(2)) } throws: { isCode(.corruption)($0) }
        #expect(try await reopened.bytes("y", at: lsn(1)) == padded("y1.", 60))
        #expect(try await reopened.bytes("y", at: lsn(3)) == padded("y3.", 60))
        // A version never written is unavailable, not damaged.
        #expect { try reopened.read(key("y"), at: lsn(6)) } throws: { isCode(.unavailable)($0) }
        await reopened.close()
    }

    /// Seeded histories of puts and deletes over a few keys, with the commit hint lagging by a
    /// random amount, the watermark raised and compactions run now and then, and a reopen at
    /// the end. After every step, every version a CRAQ read may be sent to — a key's newest, and
    /// each one superseded above the hint — is read at its LSN with its bytes (or as the
    /// tombstone it is), the ones superseded at or below it are `unavailable`, and no more older
    /// versions are held than that.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func everyVersionAReadMayBeSentToIsServedThroughCompactionsAndAReopen(seed: UInt64) async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096; $0.requestWindow = .zero })
        let store = try await f.open()
        var rng = SplitMix64(seed: seed)
        var history: [String: [Version]] = [:]
        var noted: UInt64 = 0
        var watermark: UInt64 = 0
        for seq in UInt64(1)...400 {
            // The chain commits up to a random point behind the log (never back: a hint that
            // goes down keeps more, which the exact check below does not model).
            noted = max(noted, seq > 1 ? UInt64.random(in: (seq - min(seq - 1, 30))...(seq - 1), using: &rng) : 0)
            store.noteCommitted(through: lsn(noted))
            let k = "key\(Int.random(in: 0..<12, using: &rng))"
            if Int.random(in: 0..<5, using: &rng) == 0 && history[k]?.last?.value != nil {
                try await store.append([del(k, seq: seq)])
                history[k, default: []].append(Version(seq: seq, value: nil))
            } else {
                let value = padded("\(k)@\(seq).", Int.random(in: 1...400, using: &rng))
                try await store.append([put(k, value, seq: seq)])
                history[k, default: []].append(Version(seq: seq, value: value))
            }
            if seq % 50 == 0 {
                watermark = max(watermark, noted)
                try await store.setCommitWatermark(lsn(watermark))
                try await store.compact()
            }
            try await Self.check(store, history, hint: max(noted, watermark), watermark: watermark, step: seq)
        }
        await store.close()
        let reopened = try await f.open()
        // After a reopen only the persisted watermark is known.
        try await Self.check(reopened, history, hint: watermark, watermark: watermark, step: 401)
        await reopened.close()
    }

    /// One version of a key in a test's history: its seq and value (nil: a delete).
    struct Version {
        var seq: UInt64
        var value: [UInt8]?
    }

    /// Checks what a store at commit hint `hint` serves of `history` (see the test above).
    static func check(_ store: Store, _ history: [String: [Version]], hint: UInt64, watermark: UInt64, step: UInt64) async throws {
        var expectedOlder = 0
        for (k, versions) in history {
            for (i, v) in versions.enumerated() {
                let successor = i + 1 < versions.count ? versions[i + 1].seq : nil
                let held = successor.map { $0 > hint } ?? true
                if successor != nil && held { expectedOlder += 1 }
                // A tombstone at or below the watermark may be compacted away, its key with it.
                let mayBeGone = v.value == nil && v.seq <= watermark
                let read: VersionedRead
                do throws(CatenaError) {
                    read = try store.read(key(k), at: lsn(v.seq))
                } catch {
                    #expect(error.code == .unavailable && (!held || mayBeGone), "step \(step): \(k) at \(v.seq), hint \(hint): \(error)")
                    continue
                }
                #expect(held, "step \(step): \(k) at \(v.seq) served, superseded by \(successor ?? 0) <= hint \(hint)")
                #expect(read.lsn == lsn(v.seq))
                let value = try await read.object?.bytes()
                #expect(value == v.value, "step \(step): \(k) at \(v.seq)")
            }
            if let last = versions.last {
                let newest = try store.read(key(k))
                #expect(newest.lsn == lsn(last.seq) || (newest.lsn == nil && last.value == nil && last.seq <= watermark))
            }
        }
        #expect(store.olderVersionCount <= expectedOlder, "step \(step): more older versions held than the hint allows")
    }

    /// The index itself: an older version whose record (or, for a manifest, one of whose
    /// chunks) compaction dropped is forgotten rather than left pointing into a removed segment.
    /// Through the store this never happens — the trim to the watermark goes first — so it is
    /// checked here, with the relocation of a kept manifest's chunks.
    @Test func theIndexForgetsOlderVersionsWhoseRecordsWereDroppedAndMovesTheOthers() throws {
        var index = StoreIndex()
        index.commitHint = 0
        func at(_ offset: UInt64) -> Location { Location(segment: 1, offset: offset, length: 10) }
        let upload = RequestID(high: 7, low: 7)
        let chunkRecord = chunk("m", upload: upload, index: 0, value: bytes("c"), seq: 1)
        let manifest = try Record(type: .manifest, key: key("m"), lsn: lsn(2), contentChecksum: XXH3.hash(bytes("c")),
                                  value: Manifest(upload: upload, chunkCount: 1, totalSize: 1).encoded()).encoded()
        let records: [(EncodedRecord, UInt64)] = [
            (chunkRecord, 0), (manifest, 10), (put("a", bytes("a3"), seq: 3), 20), (put("a", bytes("a4"), seq: 4), 30),
            (put("m", bytes("m5"), seq: 5), 40), (put("a", bytes("a6"), seq: 6), 50),
        ]
        for (r, offset) in records { index.apply(r.summary(at: at(offset))) }
        #expect(index.olderVersionCount == 3)  // a3, a4, the manifest

        // The manifest's chunk moves: the kept manifest follows it.
        let moved = chunkRecord.summary(at: Location(segment: 9, offset: 0, length: 10))
        index.relocate(moved, from: at(0))
        #expect(index.version(of: key("m"), at: lsn(2))?.chunks == [moved.location])
        // Dropped: a3's record, and the manifest's chunk (at its new place).
        index.forgetOlderVersions(needing: [records[2].0.summary(at: at(20)), moved])
        #expect(index.olderVersionCount == 1)
        #expect(index.version(of: key("a"), at: lsn(3)) == nil)
        #expect(index.version(of: key("a"), at: lsn(4))?.location == at(30))
        #expect(index.version(of: key("m"), at: lsn(2)) == nil)
        #expect(index.version(of: key("m"), at: lsn(5))?.location == at(40))
    }
}
