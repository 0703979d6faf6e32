import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Synchronization
import Testing

// Regressions for the storage review findings. Every wait is bounded: gates are opened in
// `defer`, store operations that may be stuck behind a gate are awaited through `bounded`, and
// polling gives up after a timeout.

/// An awaited operation that did not finish in time.
private struct TimedOut: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(what)" }
}

private final class Outcome<T: Sendable>: Sendable {
    let result = Mutex<Result<T, any Error>?>(nil)
}

/// Runs `operation` in a task and waits (polling every millisecond) at most `timeout` for it;
/// throws ``TimedOut`` if it has not finished by then (the task is left behind).
@discardableResult
private func bounded<T: Sendable>(_ what: String, timeout: Duration = .seconds(5), _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    let outcome = Outcome<T>()
    Task {
        let r: Result<T, any Error>
        do { r = .success(try await operation()) } catch { r = .failure(error) }
        outcome.result.withLock { $0 = r }
    }
    let deadline = ContinuousClock.now + timeout
    while true {
        if let r = outcome.result.withLock({ $0 }) { return try r.get() }
        if ContinuousClock.now >= deadline { throw TimedOut(what: what) }
        try await Task.sleep(for: .milliseconds(1))
    }
}

/// Polls `condition` every millisecond for at most `timeout`.
private func eventually(timeout: Duration = .seconds(5), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        do { try await Task.sleep(for: .milliseconds(1)) } catch { return condition() }  // cancelled: no spinning
    }
    return true
}

/// A fixture whose store runs on a ``GatedFileSystem`` over the fixture's crash-simulating one.
private func gatedFixture(configure: @escaping @Sendable (inout StoreConfiguration) -> Void = { _ in }) -> (Fixture, GatedFileSystem) {
    let fs = CrashSimulatingFileSystem()
    let gated = GatedFileSystem(wrapping: fs)
    let f = Fixture(fs: fs, configure: { c in
        c.fileSystem = gated
        configure(&c)
    })
    return (f, gated)
}

/// The path suffix of segment `id`'s file ("/<20 digits>.seg").
private func segmentFileSuffix(_ id: UInt64) -> String {
    let digits = String(id)
    return "/" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".seg"
}

private func value(_ seq: Int, count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: seq &* 31 &+ $0) }
}

private func isCode(_ code: CatenaError.Code) -> @Sendable (any Error) -> Bool {
    { ($0 as? CatenaError)?.code == code }
}

private func seqs(_ store: Store) async throws -> [UInt64] {
    try await store.records(after: .zero).collect().map(\.lsn.seq)
}

private func oneToN(_ n: Int) -> [UInt64] { (0..<n).map { UInt64($0 + 1) } }

@Suite("Review regressions")
struct RegressionTests {
    /// A. The watermark guard compares seqs: a cut in a later epoch whose seq is below the
    /// watermark's would remove committed records.
    @Test func truncateComparesSeqsNotEpochs() async throws {
        let store = try await Fixture().open()
        let records = (1...10).map { put("k\($0)", value($0, count: 50), seq: UInt64($0)) }
        try await store.append(records)
        try await store.setCommitWatermark(LSN(epoch: 1, seq: 8))

        await #expect {
            try await bounded("truncate(after: 2.3)") { try await store.truncate(after: LSN(epoch: 2, seq: 3)) }
        } throws: { isCode(.belowCommitWatermark)($0) }
        #expect(store.highestLSN == LSN(epoch: 1, seq: 10), "a refused truncation removes nothing")
        #expect(try await seqs(store) == oneToN(10))
        #expect(try await contents(store) == model(records))

        // At the watermark's seq (in a later epoch) it is allowed.
        #expect(try await bounded("truncate(after: 2.8)") { try await store.truncate(after: LSN(epoch: 2, seq: 8)) } == 2)
        #expect(store.highestLSN == LSN(epoch: 1, seq: 8))
        #expect(try await contents(store) == model(records.prefix(8)))
        await store.close()
    }

    /// B. A truncation races neither with raising the watermark nor with enqueues.
    ///
    /// Semantics: `truncate(after:)` resets the enqueue tail to the cut and queues the truncation
    /// in one critical section. Appends enqueued after the call follow the cut and survive it
    /// (here seq 6); appends enqueued before it may be acknowledged and then removed (here seq
    /// 11, whose fsync is held while the truncation is queued behind it). While a truncation to
    /// T is pending, the watermark cannot be raised above T.
    @Test func truncateOrdersWithConcurrentWatermarkAndEnqueue() async throws {
        let (f, gated) = gatedFixture()
        let store = try await f.open()
        let records = (1...10).map { put("k\($0)", value($0, count: 40), seq: UInt64($0)) }
        try await store.append(records)

        let gate = gated.holdNextSync(matching: ".seg")
        defer { gate.open() }
        let ticket11 = try store.enqueue([put("before-cut", bytes("removed"), seq: 11)])
        try #require(await gate.waitUntilReached(), "the syncer never reached the held fsync of seq 11")

        let truncation = Task { try await store.truncate(after: LSN(epoch: 1, seq: 5)) }
        // The call resets the tail at once; the truncation itself waits behind the held batch.
        try #require(await eventually { store.lastEnqueuedLSN == LSN(epoch: 1, seq: 5) }, "truncate never reset the enqueue tail")

        await #expect("the watermark must not pass a pending truncation") {
            try await bounded("setCommitWatermark") { try await store.setCommitWatermark(LSN(epoch: 1, seq: 8)) }
        } throws: { isCode(.invalidArgument)($0) }
        #expect("the tail is the cut, not seq 11") {
            _ = try store.enqueue([put("x", bytes("x"), seq: 12)])
        } throws: { isCode(.lsnOutOfOrder)($0) }
        let after = put("after-cut", bytes("survives"), seq: 6)
        let ticket6 = try store.enqueue([after])

        gate.open()
        do {
            try await bounded("seq 11's ticket") { try await ticket11.durable() }
        } catch let error as TimedOut {
            Issue.record(error)
        } catch {
            // Failing is as fine as succeeding for an append the truncation overtakes.
        }
        _ = try await bounded("the truncation") { try await truncation.value }
        try await bounded("seq 6's ticket") { try await ticket6.durable() }

        #expect(store.highestLSN.seq == 6)
        #expect(store.commitWatermark <= store.highestLSN)
        #expect(try await seqs(store) == oneToN(6))
        let expected = model(records.prefix(5) + [after])
        #expect(try await contents(store) == expected)
        await store.close()

        let reopened = try await f.open()
        #expect(reopened.highestLSN.seq == 6)
        #expect(reopened.commitWatermark <= reopened.highestLSN)
        #expect(try await contents(reopened) == expected)
        await reopened.close()
    }

    /// C. A truncation that fails part-way (later segments already removed, the cut segment not
    /// rewritten) leaves memory and disk disagreeing: the store must refuse writes until reopened,
    /// and reopening yields a gap-free prefix that truncating again cuts correctly.
    @Test func truncationFailingPartWayPoisonsTheStore() async throws {
        let (f, gated) = gatedFixture(configure: { $0.segmentSize = 8192 })
        let store = try await f.open()
        let records = (1...60).map { put("k\($0 % 7)", value($0, count: 300), seq: UInt64($0)) }
        for start in stride(from: 0, to: 60, by: 5) { try await store.append(Array(records[start..<(start + 5)])) }
        try #require(store.segments.count >= 3, "the cut must leave later segments to remove first")

        gated.failNextCreate(matching: ".seg.tmp", with: .diskFull)
        await #expect(throws: (any Error).self) {
            try await bounded("the failing truncation") { try await store.truncate(after: LSN(epoch: 1, seq: 3)) }
        }
        #expect(!gated.hasArmedRules, "the truncation never created its output")
        #expect("a store whose truncation failed part-way must refuse writes") {
            _ = try store.enqueue([put("k", bytes("v"), seq: 4)])
        } throws: { isCode(.ioFailure)($0) }
        try await bounded("close") { await store.close() }
        f.fs.crash()

        let reopened = try await f.open()
        let found = try await seqs(reopened)
        #expect(found == oneToN(found.count), "a gap-free prefix")
        #expect(found.count >= 3 && found.count <= 60)
        #expect(try await contents(reopened) == model(records.prefix(found.count)))
        try await bounded("the second truncation") { try await reopened.truncate(after: LSN(epoch: 1, seq: 3)) }
        #expect(try await seqs(reopened) == [1, 2, 3])
        #expect(try await contents(reopened) == model(records.prefix(3)))
        await reopened.close()
    }

    /// D. Compaction planned an upload as abandoned; its manifest became durable while the
    /// compaction ran. The chunks must survive, or the object's chunks are gone.
    @Test func compactionKeepsChunksWhoseManifestLandsMeanwhile() async throws {
        let clock = ManualClock(nanoseconds: 1_000_000_000_000)
        let (f, gated) = gatedFixture(configure: {
            $0.segmentSize = 4096
            $0.requestWindow = .zero
            $0.abandonedUploadTimeout = .seconds(60)
            $0.now = { clock.now }
        })
        let store = try await f.open()
        let upload = RequestID(high: 7, low: 7)
        var seq: UInt64 = 0
        func next() -> UInt64 { seq += 1; return seq }
        // A live record before the chunks, so rewriting their segment produces an output file.
        try await store.append([put("first", value(0, count: 100), seq: next())])
        let pieces = (0..<3).map { value(100 + $0, count: 1000) }
        for (i, piece) in pieces.enumerated() {
            try await store.append([chunk("big", upload: upload, index: UInt32(i), value: piece, seq: next(), timestamp: clock.now)])
        }
        let lastChunk = seq
        for i in 0..<12 { try await store.append([put("f\(i)", value(i, count: 400), seq: next())]) }
        try #require((store.sealedSegments.last?.lastLSN.seq ?? 0) >= lastChunk, "the chunks must be in sealed segments")
        try await store.setCommitWatermark(store.highestLSN)
        clock.advance(seconds: 61)

        let gate = gated.holdNextSync(matching: ".seg.tmp")
        defer { gate.open() }
        let compaction = Task { try await store.compact() }
        try #require(await gate.waitUntilReached(), "compaction never synced an output")

        let object = pieces.flatMap { $0 }
        let manifest = Record(
            type: .manifest, key: key("big"), lsn: LSN(epoch: 1, seq: next()),
            contentChecksum: XXH3.hash(object),
            value: Manifest(upload: upload, chunkCount: 3, totalSize: UInt64(object.count)).encoded())
        try await bounded("the manifest append") { try await store.append([try manifest.encoded()]) }
        gate.open()
        _ = try await bounded("the compaction") { try await compaction.value }

        #expect(try store.head(key("big"))?.size == 3000)
        #expect(try await store.value("big") == object)
        await store.close()
        let reopened = try await f.open()
        #expect(try await reopened.value("big") == object)
        await reopened.close()
    }

    /// E. A segment roll's new file is created, but its header is not yet fsynced, when a
    /// compaction's directory fsync makes its name durable; the compaction's outputs have higher
    /// ids. A power cut then leaves a torn-header segment that is not the highest id: start-up
    /// must drop it (it held nothing acknowledged), not refuse to open.
    ///
    /// `seed` nil: a crash without torn writes (the new segment is empty). Seeds 3, 18, 20 and 21
    /// tear its header (with this history); 1 and 2 keep it and tear or keep the record.
    @Test(arguments: [nil, 1, 2, 3, 18, 20, 21] as [UInt64?])
    func powerCutDuringARollAfterCompactionLeavesAnOpenableStore(seed: UInt64?) async throws {
        let (f, gated) = gatedFixture(configure: { $0.segmentSize = 4096; $0.requestWindow = .zero })
        let store = try await f.open()
        var records = (1...40).map { put("k\($0 % 4)", value($0, count: 300), seq: UInt64($0)) }
        for start in stride(from: 0, to: 40, by: 2) { try await store.append(Array(records[start..<(start + 2)])) }
        try await store.setCommitWatermark(store.highestLSN)
        let acknowledged = 40

        // The next append must roll: make it just too big for the rest of the active segment.
        let active = try #require(store.segments.last)
        try #require(!active.sealed && active.recordCount > 0)
        let nextID = try #require(store.segments.map(\.id).max()) + 1
        let room = 4096 - Int(active.byteSize)
        let overhead = put("roll", [], seq: 41).count
        let roll = put("roll", value(41, count: max(1, room - overhead + 1)), seq: 41)
        try #require(roll.count > room)
        records.append(roll)

        let gate = gated.holdNextSync(matching: segmentFileSuffix(nextID))
        defer { gate.open() }
        let ticket = try store.enqueue([roll])
        try #require(await gate.waitUntilReached(), "the new segment's first fsync was never reached")
        #expect(store.segments.last?.id == nextID)

        let report = try await bounded("the compaction") { try await store.compact() }
        #expect(report.segmentsRewritten > 0)
        #expect(store.segments.map(\.id).max()! > nextID, "compaction outputs get higher ids")

        if let seed {
            var rng = SplitMix64(seed: seed)
            f.fs.crash(tornWrites: true, using: &rng)
        } else {
            f.fs.crash()
        }
        gate.open() // the held fsync now fails: its handle died with the power
        do {
            try await bounded("the roll's ticket") { try await ticket.durable() }
        } catch let error as TimedOut {
            Issue.record(error)
        } catch {}
        try await bounded("close") { await store.close() }

        let reopened = try await f.open()
        let highest = Int(reopened.highestLSN.seq)
        #expect(highest >= acknowledged && highest <= acknowledged + 1, "every acknowledged record survives")
        // Compaction dropped superseded records, so the seqs have gaps; they are still in order.
        let found = try await seqs(reopened)
        #expect(found == found.sorted() && Set(found).count == found.count)
        #expect(found.last.map(Int.init) == highest)
        #expect(try await contents(reopened) == model(records.prefix(highest)))
        try await reopened.append([put("after", bytes("v"), seq: UInt64(highest + 1))])
        await reopened.close()
    }

    /// F. A tombstone goes once every older record of its key goes in the same rewrite, even
    /// when that rewrite does not start at the log's first segment (here a clean one).
    @Test func tombstoneIsDroppedAfterACleanFirstSegment() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096; $0.requestWindow = .zero })
        let store = try await f.open()
        var seq: UInt64 = 0
        var records: [EncodedRecord] = []
        func add(_ r: (UInt64) -> EncodedRecord) async throws {
            seq += 1
            let record = r(seq)
            records.append(record)
            try await store.append([record])
        }
        // A first segment of keys written once: nothing in it is ever dead.
        var clean = 0
        while store.sealedSegments.isEmpty {
            clean += 1
            try await add { put("clean\(clean)", value(clean, count: 300), seq: $0) }
        }
        try await add { put("gone", value(1, count: 500), seq: $0) }
        for i in 0..<10 { try await add { put("filler\(i)", value(i, count: 500), seq: $0) } }
        try await add { del("gone", seq: $0) }
        let deleteSeq = seq
        for i in 0..<10 { try await add { put("filler\(i)", value(i + 50, count: 500), seq: $0) } }
        try #require((store.sealedSegments.last?.lastLSN.seq ?? 0) > deleteSeq, "the tombstone must be in a sealed segment")
        #expect(try await store.records(inSegment: store.segments[0].id).collect().allSatisfy { $0.key.string.hasPrefix("clean") })

        try await store.setCommitWatermark(store.highestLSN)
        try await store.compact()
        try await store.compact()
        let remaining = try await store.records(after: .zero).collect()
        #expect(!remaining.contains { $0.lsn.seq == deleteSeq }, "the tombstone of 'gone' was kept")
        #expect(!remaining.contains { $0.key.string == "gone" })
        #expect(try store.head(key("gone")) == nil)
        #expect(try await contents(store) == model(records))
        await store.close()

        let reopened = try await f.open()
        #expect(try reopened.head(key("gone")) == nil)
        #expect(!(try await reopened.records(after: .zero).collect().contains { $0.key.string == "gone" }))
        #expect(try await contents(reopened) == model(records))
        await reopened.close()
    }

    /// G. With the watermark at the log's end, one compaction leaves no superseded put in any
    /// sealed segment (the active one is never compacted) and keeps every newest version.
    @Test(arguments: [(1, 20), (2, 60), (3, 120), (4, 200)] as [(UInt64, Int)])
    func compactionRemovesExactlyTheSupersededRecords(seed: UInt64, keys: Int) async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096; $0.requestWindow = .zero })
        let store = try await f.open()
        var rng = SplitMix64(seed: seed)
        let records = (1...300).map { i -> EncodedRecord in
            let k = "key-\(Int.random(in: 0..<keys, using: &rng))"
            if Int.random(in: 0..<6, using: &rng) == 0 { return del(k, seq: UInt64(i)) }
            return put(k, value(i, count: Int.random(in: 20...300, using: &rng)), seq: UInt64(i))
        }
        for start in stride(from: 0, to: records.count, by: 4) { try await store.append(Array(records[start..<(start + 4)])) }
        try await store.setCommitWatermark(store.highestLSN)
        let watermark = store.commitWatermark
        try await store.compact()

        var newest: [String: UInt64] = [:]
        for r in records { newest[r.key.string] = r.lsn.seq }
        for segment in store.segments where segment.sealed {
            for r in try await store.records(inSegment: segment.id).collect() where r.type == .put && r.lsn <= watermark {
                #expect(newest[r.key.string] == r.lsn.seq, "superseded put \(r.lsn) of '\(r.key)' survived in sealed segment \(segment.id)")
            }
        }
        #expect(try await contents(store) == model(records))
        await store.close()
    }
}
