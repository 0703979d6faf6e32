import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Testing

/// Model-based randomized testing of the store: for many seeds, a random sequence of appends,
/// watermark raises, compactions, truncations, reads, clean reopens and power cuts (at a random
/// file operation of an append, compaction, truncation or watermark write), checked after every
/// step against a plain list of records — including, with a random request-id window (none for
/// a third of the seeds; records' head timestamps are their seqs in ns), that compaction keeps
/// every record inside it and that `recentRequests(window:)` returns exactly those records. Every failure names the seed, the step and the operation;
/// `modelReplaySeeds` re-runs chosen seeds with the trace printed (timing — group commit, where a
/// power cut lands — can make a replay take a different path after the first crash).
@Suite("Model-based")
struct ModelBasedTests {
    /// 240 seeds in 6 groups of 40; the groups run in parallel.
    @Test(arguments: 0..<6)
    func randomOperationsAgreeWithTheModel(group: Int) async throws {
        let first = UInt64(group) * 40
        for seed in first..<(first + 40) {
            await ModelRun.run(seed: seed)
        }
    }

    /// Found by the model-based run (seeds 32, 107, 127, 151, 170, 211, 213, 279, 287 in some runs): compaction
    /// may drop the log's last records (a tombstone at the watermark, with the older versions of
    /// its key) once the segment holding them is sealed and last — here after a truncation at a
    /// segment boundary. The store then derives its log end from the records that are left, so
    /// `highestLSN` falls below the commit watermark and, after a reopen, the enqueue tail goes
    /// back too: the store accepts a *different* record at an already committed seq.
    @Test func compactingTheLogsLastRecordsDoesNotMoveItsEndBack() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096; $0.requestWindow = .zero })
        let store = try await f.open()
        let big = [UInt8](repeating: 1, count: 1000)
        try await store.append([put("a", big, seq: 1), put("b", big, seq: 2), put("c", big, seq: 3)])
        try await store.append([del("a", seq: 4)])
        try await store.append([put("d", big, seq: 5)])  // rolls: segment 1 holds seqs 1...4
        try #require(store.sealedSegments.map(\.lastLSN.seq) == [4])
        let end = LSN(epoch: 1, seq: 4)
        try await store.setCommitWatermark(end)
        try await store.compact()  // drops a@1 and its tombstone a@4 (both at or below the watermark)
        #expect(try await store.truncate(after: end) == 1)  // removes seq 5: the sealed segment is last
        #expect(store.highestLSN == end, "highestLSN \(store.highestLSN) fell below the commit watermark \(store.commitWatermark)")
        #expect(store.lastEnqueuedLSN == end)
        await store.close()

        let reopened = try await f.open()
        #expect(reopened.highestLSN == end, "after reopen highestLSN is \(reopened.highestLSN), commit watermark \(reopened.commitWatermark)")
        #expect(reopened.lastEnqueuedLSN == end, "after reopen the enqueue tail went back to \(reopened.lastEnqueuedLSN)")
        // Seq 4 is committed (it is the watermark): a different record at seq 4 must be refused.
        #expect { try reopened.enqueue([put("x", bytes("reused seq"), seq: 4)]) } throws: { ($0 as? CatenaError)?.code == .lsnOutOfOrder }
        await reopened.close()
    }

    @Test(.enabled(if: !modelReplaySeeds.isEmpty), arguments: modelReplaySeeds)
    func replay(seed: UInt64) async throws {
        await ModelRun.run(seed: seed, verbose: true)
    }
}

/// Seeds to replay alone (with the trace printed), e.g. while diagnosing a failure.
private let modelReplaySeeds: [UInt64] = []

/// A record's key as a string, without `Key`'s validation (the records are ours).
private func keyName(_ r: EncodedRecord) -> String {
    String(decoding: r.bytes[r.header.keyOffset..<(r.header.keyOffset + r.header.keyLength)], as: UTF8.self)
}

/// The live state (key -> value) after applying `records` in order.
private func liveState(_ records: some Sequence<EncodedRecord>) -> [String: [UInt8]] {
    var m: [String: [UInt8]] = [:]
    for r in records { m[keyName(r)] = r.type == .delete ? nil : Array(r.value) }
    return m
}

/// A check that failed: the message already names seed, step and operation.
private struct ModelFailure: Error, CustomStringConvertible {
    var description: String
}

/// Keys of different lengths and shared prefixes, so byte order and pagination matter.
private let keyPool = ["a", "a/b", "a0", "ab", "b", "b-1", "c", "k", "k1", "k10", "k2", "z"]

private func byteOrder(_ a: String, _ b: String) -> Bool {
    Array(a.utf8).lexicographicallyPrecedes(Array(b.utf8))
}

private func isCode(_ error: any Error, _ code: CatenaError.Code) -> Bool {
    (error as? CatenaError)?.code == code
}

/// The reference model: the log as a plain array (`log[i]` has seq `i + 1`) and the watermark.
/// Compaction does not change the model; the checks allow for what it may drop.
private struct Model {
    var log: [EncodedRecord] = [] {
        didSet { keyNames = log.map(keyName) }
    }
    /// `log[i]`'s key, decoded once.
    private(set) var keyNames: [String] = []
    var watermark: LSN = .zero
    var epoch: UInt64 = 1
    /// The request-id window in ns (head timestamps are seqs in ns here); 0: none.
    var window: UInt64 = 0
    /// The latest anchor (log-end timestamp) any compaction may have planned with: records
    /// inside the window of it were kept by every compaction.
    var compactionAnchor: UInt64 = 0

    var highest: LSN { log.last?.lsn ?? .zero }

    /// Whether a record with head timestamp `timestamp` is inside the window anchored at `anchor`.
    func inWindow(_ timestamp: UInt64, anchor: UInt64) -> Bool {
        window > 0 && (anchor > timestamp ? anchor - timestamp : 0) < window
    }

    /// Per key, its newest record (put or delete).
    var newest: [String: EncodedRecord] {
        var out: [String: EncodedRecord] = [:]
        for (k, r) in zip(keyNames, log) { out[k] = r }
        return out
    }

    /// Live keys and their values.
    var live: [String: [UInt8]] {
        newest.compactMapValues { $0.type == .delete ? nil : Array($0.value) }
    }

    /// Per record, whether compaction may have dropped it: at or below the watermark, outside
    /// the request-id window of the latest compaction anchor, and a tombstone or superseded by
    /// a newer version at or below the watermark.
    var mayBeCompacted: [Bool] {
        var out = [Bool](repeating: false, count: log.count)
        var seenAtWatermark = Set<String>()
        for i in log.indices.reversed() where log[i].lsn.seq <= watermark.seq {
            let k = keyNames[i]
            out[i] = (log[i].type == .delete || seenAtWatermark.contains(k)) && !inWindow(log[i].header.timestamp, anchor: compactionAnchor)
            seenAtWatermark.insert(k)
        }
        return out
    }
}

/// One seed's run.
private final class ModelRun {
    let seed: UInt64
    let verbose: Bool
    var rng: SplitMix64
    let fs: CrashSimulatingFileSystem
    let fixture: Fixture
    let keys: [String]
    var store: Store!
    var model = Model()
    var step = 0
    var op = "open"
    var trace: [String] = []

    init(seed: UInt64, verbose: Bool) {
        self.seed = seed
        self.verbose = verbose
        var rng = SplitMix64(seed: seed &* 0x2545_F491_4F6C_DD1D &+ 0x1234_5678)
        let segmentSize = Int.random(in: 4...16, using: &rng) << 10
        let durability: Durability = rng.next() % 4 == 0 ? .always : .batch
        keys = Array(keyPool.shuffled(using: &rng).prefix(Int.random(in: 3...12, using: &rng)))
        let window: UInt64 = rng.next() % 3 == 0 ? 0 : UInt64.random(in: 1...40, using: &rng)
        let fs = CrashSimulatingFileSystem()
        self.fs = fs
        fixture = Fixture(fs: fs) { c in
            c.segmentSize = segmentSize
            c.durability = durability
            c.readThreads = 1
            c.requestWindow = .nanoseconds(window)
        }
        self.rng = rng
        model.window = window
        trace.append("config: segmentSize \(segmentSize), durability \(durability), keys \(keys), request window \(window) ns")
    }

    static func run(seed: UInt64, verbose: Bool = false) async {
        let run = ModelRun(seed: seed, verbose: verbose)
        do {
            try await run.go()
        } catch {
            let recent = run.trace.suffix(12).joined(separator: "\n  ")
            Issue.record("\(error)\n  last operations (seed \(seed)):\n  \(recent)")
        }
        if let store = run.store { await store.close() }
    }

    // MARK: - Failures

    func failure(_ message: String) -> ModelFailure {
        ModelFailure(description: "seed \(seed), step \(step) [\(op)]: \(message)")
    }

    func require(_ condition: Bool, _ message: @autoclosure () -> String) throws(ModelFailure) {
        if !condition { throw failure(message()) }
    }

    /// Runs a store call that must not fail, naming the step if it does.
    func must<T>(_ what: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as ModelFailure {
            throw error
        } catch {
            throw failure("\(what) failed unexpectedly: \(error)")
        }
    }

    func begin(_ description: String) {
        op = description
        trace.append("step \(step): \(description)")
        if verbose { print("seed \(seed) step \(step): \(description)") }
    }

    // MARK: - The run

    func go() async throws {
        store = try await must("open") { try await fixture.open() }
        try await checkInvariants()
        let steps = Int.random(in: 20...80, using: &rng)
        for s in 1...steps {
            step = s
            let roll = Int.random(in: 0..<100, using: &rng)
            switch roll {
            case 0..<38: try await appendStep()
            case 38..<49: try await watermarkStep()
            case 49..<58: try await compactStep()
            case 58..<63: try await compactWhileAppendingStep()
            case 63..<69: try await truncateStep()
            case 69..<70: try await discardStep()
            case 70..<79: try await readStep()
            case 79..<82: try await reopenStep()
            case 82..<85: try await crashAfterAcknowledgedStep()
            case 85..<91: try await powerCutDuringAppendsStep()
            case 91..<94: try await powerCutDuringCompactionStep()
            case 94..<98: try await powerCutDuringTruncationStep()
            default: try await powerCutDuringWatermarkStep()
            }
            try await checkInvariants()
        }
    }

    // MARK: - Records

    /// 1...5 records continuing after `last` (puts of small values, and deletes).
    func makeBatch(after last: UInt64) -> [EncodedRecord] {
        let count = Int.random(in: 1...5, using: &rng)
        return (1...count).map { i in
            let seq = last + UInt64(i)
            let k = keys[Int.random(in: 0..<keys.count, using: &rng)]
            // Unique per record (the epoch grows at every truncation); some records carry none.
            let id = Int.random(in: 0..<8, using: &rng) == 0 ? RequestID.none : RequestID(high: model.epoch, low: seq)
            if Int.random(in: 0..<4, using: &rng) == 0 { return del(k, seq: seq, epoch: model.epoch, requestID: id) }
            let length = Int.random(in: 0...120, using: &rng)
            let base = UInt8(truncatingIfNeeded: rng.next())
            let value = (0..<length).map { UInt8(truncatingIfNeeded: Int(base) &+ $0 &* 31 &+ Int(seq)) }
            return put(k, value, seq: seq, epoch: model.epoch, requestID: id)
        }
    }

    func describe(_ batch: [EncodedRecord]) -> String {
        batch.map { r in
            "\(r.key.string)=" + (r.type == .delete ? "del" : "put(\(r.value.count)B)") + "@\(r.lsn)"
        }.joined(separator: " ")
    }

    // MARK: - Steps

    func appendStep() async throws {
        if Int.random(in: 0..<10, using: &rng) == 0 { model.epoch += 1 }
        var batches: [[EncodedRecord]] = []
        var last = model.highest.seq
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            let b = makeBatch(after: last)
            last += UInt64(b.count)
            batches.append(b)
        }
        begin("append " + batches.map { "[\(describe($0))]" }.joined(separator: " "))
        var tickets: [AppendTicket] = []
        for b in batches {
            tickets.append(try await must("enqueue") { try store.enqueue(b) })
        }
        // Nothing of an unacknowledged append may be visible unless it is durable; here, at
        // least, every read sees a version that is either the model's or one of these batches'.
        let pending = batches.flatMap { $0 }
        let newest = model.newest
        for k in keys {
            let h = try await must("head during append") { try store.head(key(k)) }
            if let h {
                try require(newest[k]?.lsn == h.lsn || pending.contains { $0.lsn == h.lsn && $0.key.string == k },
                            "head(\(k)) during append shows \(h.lsn), neither the model's version nor a pending one")
            }
        }
        for t in tickets { try await must("append durable") { try await t.durable() } }
        model.log += pending
    }

    func watermarkStep() async throws {
        guard !model.log.isEmpty else {
            begin("watermark (skipped: empty log)")
            return
        }
        let seq = Int.random(in: Int(model.watermark.seq)...model.log.count, using: &rng)
        let lsn = seq == 0 ? LSN.zero : model.log[seq - 1].lsn
        begin("setCommitWatermark(\(lsn))")
        try await must("setCommitWatermark") { try await store.setCommitWatermark(lsn) }
        model.watermark = lsn
        // Going back is refused.
        if lsn.seq >= 2 {
            let lower = model.log[Int(lsn.seq) - 2].lsn
            do {
                try await store.setCommitWatermark(lower)
                throw failure("setCommitWatermark(\(lower)) below \(lsn) was accepted")
            } catch let error as ModelFailure {
                throw error
            } catch {
                try require(isCode(error, .invalidArgument), "lowering the watermark: \(error)")
            }
        }
    }

    /// Before a compaction may plan: it anchors the window at the log's last record.
    func noteCompaction() {
        model.compactionAnchor = max(model.compactionAnchor, model.log.last?.header.timestamp ?? 0)
    }

    func compactStep() async throws {
        begin("compact (watermark \(model.watermark))")
        noteCompaction()
        let report = try await must("compact") { try await store.compact() }
        op += " -> rewrote \(report.segmentsRewritten), dropped \(report.recordsDropped)"
        trace[trace.count - 1] += " -> rewrote \(report.segmentsRewritten), dropped \(report.recordsDropped)"
    }

    func compactWhileAppendingStep() async throws {
        let batch = makeBatch(after: model.highest.seq)
        begin("compact while appending [\(describe(batch))]")
        // The batch may be durable before the compaction plans.
        model.compactionAnchor = max(model.compactionAnchor, batch.last!.header.timestamp)
        let s: Store = store
        async let report = s.compact()
        let ticket = try await must("enqueue") { try store.enqueue(batch) }
        try await must("append durable") { try await ticket.durable() }
        do {
            _ = try await report
        } catch {
            throw failure("compact failed unexpectedly: \(error)")
        }
        model.log += batch
    }

    func randomCut() -> UInt64 {
        UInt64.random(in: model.watermark.seq...UInt64(model.log.count), using: &rng)
    }

    func lsnAt(_ seq: UInt64) -> LSN {
        seq == 0 ? .zero : model.log[Int(seq) - 1].lsn
    }

    func truncateStep() async throws {
        let cut = randomCut()
        let lsn = lsnAt(cut)
        begin("truncate(after: \(lsn)) of \(model.highest)")
        let removed = try await must("truncate") { try await store.truncate(after: lsn) }
        try require(removed == model.log.count - Int(cut), "truncate removed \(removed) records, expected \(model.log.count - Int(cut))")
        model.log.removeLast(model.log.count - Int(cut))
        model.epoch += 1
        // Cutting below the watermark is refused (but for discarding the whole log, see discardStep).
        if model.watermark.seq >= 2 {
            do {
                try await store.truncate(after: lsnAt(model.watermark.seq - 1))
                throw failure("truncate below the watermark \(model.watermark) was accepted")
            } catch let error as ModelFailure {
                throw error
            } catch {
                try require(isCode(error, .belowCommitWatermark), "truncating below the watermark: \(error)")
            }
        }
    }

    /// `truncate(after: .zero)` discards the whole log at any watermark (a node about to copy
    /// everything from the tail) and resets the watermark; half the time the power is cut
    /// during it: then either nothing was removed and the watermark is the old one, or the
    /// watermark is zero and a prefix of the log is left.
    func discardStep() async throws {
        let cutPower = Bool.random(using: &rng)
        let cutAfter = Int.random(in: 0...10, using: &rng)
        begin("truncate(after: .zero) of \(model.highest), watermark \(model.watermark)" + (cutPower ? ", power cut after \(cutAfter) ops" : ""))
        let all = model.log
        let old = model.watermark
        let present = try await must("records(after: .zero)") { try await store.records(after: .zero).collect().count }
        model.epoch += 1
        func discard() async throws {
            let removed = try await must("truncate(after: .zero)") { try await store.truncate(after: .zero) }
            try require(removed == present || cutPower, "discarding the log removed \(removed) records; it held \(present)")
            try require(store.compactedThrough == .zero, "compactedThrough is \(store.compactedThrough) after discarding the whole log")
            model.log = []
            model.watermark = .zero
        }
        guard cutPower else {
            try await discard()
            return
        }
        fs.failAfter(operations: cutAfter)
        let removed = try? await store.truncate(after: .zero)
        op += removed.map { " (finished: removed \($0))" } ?? " (failed)"
        try await powerLossAndReopen(enqueued: all, atLeast: 0, watermarks: [old, .zero])
        try require(model.watermark == .zero || model.log.count == all.count,
                    "after a power cut the watermark is still \(model.watermark) but only \(model.log.count) of \(all.count) records are left")
        if store.compactedThrough > store.commitWatermark {
            // Cut between emptying the log and resetting compactedThrough: discarding again finishes.
            op += ", discard again"
            try await discard()
        }
    }

    func readStep() async throws {
        begin("read")
        // A random page size for a full listing and a random stream start; the invariants read
        // everything else after every step anyway.
        let pageSize = Int.random(in: 1...4, using: &rng)
        let listed = try await must("list") { try store.allKeys(pageSize: pageSize) }
        let liveKeys = model.live.keys.sorted(by: byteOrder)
        try require(listed == liveKeys, "list (page size \(pageSize)) gave \(listed), model has \(liveKeys)")
        try await checkStream(from: nil)
    }

    func reopenStep() async throws {
        let crash = Bool.random(using: &rng)
        begin(crash ? "close, crash, reopen" : "close, reopen")
        await store.close()
        if crash { fs.crash(tornWrites: true, using: &rng) }
        store = try await must("reopen") { try await fixture.open() }
        try require(store.damage.isEmpty, "damage after a clean close: \(store.damage)")
    }

    /// Power loss right after acknowledged appends: nothing may be lost, nothing is damaged.
    func crashAfterAcknowledgedStep() async throws {
        let batch = makeBatch(after: model.highest.seq)
        begin("append [\(describe(batch))], then power loss")
        try await must("append") { try await store.append(batch) }
        model.log += batch
        let all = model.log
        try await powerLossAndReopen(enqueued: all, atLeast: all.count, watermarks: [model.watermark])
    }

    /// Cuts the power after a random number of file operations while appends are in flight.
    func powerCutDuringAppendsStep() async throws {
        let cutAfter = Int.random(in: 0...12, using: &rng)
        var batches: [[EncodedRecord]] = []
        var last = model.highest.seq
        for _ in 0..<Int.random(in: 1...4, using: &rng) {
            let b = makeBatch(after: last)
            last += UInt64(b.count)
            batches.append(b)
        }
        begin("power cut after \(cutAfter) ops during appends " + batches.map { "[\(describe($0))]" }.joined(separator: " "))
        fs.failAfter(operations: cutAfter)
        var enqueued = model.log
        var tickets: [(AppendTicket, Int)] = []
        for b in batches {
            guard let t = try? store.enqueue(b) else { break }
            enqueued += b
            tickets.append((t, enqueued.count))
        }
        // What a reader sees must be durable: it must survive the power loss.
        var visible = store.highestLSN.seq
        for k in keys {
            if let h = try? store.head(key(k)) { visible = max(visible, h.lsn.seq) }
        }
        var acknowledged = model.log.count
        for (t, end) in tickets {
            if (try? await t.durable()) != nil { acknowledged = max(acknowledged, end) }
        }
        op += " (acknowledged through \(acknowledged), visible \(visible), enqueued \(enqueued.count))"
        try require(Int(visible) <= enqueued.count, "visible seq \(visible) was never enqueued")
        try await powerLossAndReopen(enqueued: enqueued, atLeast: max(acknowledged, Int(visible)), watermarks: [model.watermark])
    }

    func powerCutDuringCompactionStep() async throws {
        let cutAfter = Int.random(in: 0...20, using: &rng)
        begin("power cut after \(cutAfter) ops during compaction (watermark \(model.watermark))")
        noteCompaction()
        fs.failAfter(operations: cutAfter)
        let report = try? await store.compact()
        op += report.map { " (finished: rewrote \($0.segmentsRewritten), dropped \($0.recordsDropped))" } ?? " (failed)"
        let all = model.log
        try await powerLossAndReopen(enqueued: all, atLeast: all.count, watermarks: [model.watermark])
    }

    func powerCutDuringTruncationStep() async throws {
        let cut = randomCut()
        let lsn = lsnAt(cut)
        let cutAfter = Int.random(in: 0...16, using: &rng)
        begin("power cut after \(cutAfter) ops during truncate(after: \(lsn)) of \(model.highest)")
        fs.failAfter(operations: cutAfter)
        let removed = try? await store.truncate(after: lsn)
        op += removed.map { " (finished: removed \($0))" } ?? " (failed)"
        let all = model.log
        model.epoch += 1
        try await powerLossAndReopen(enqueued: all, atLeast: Int(cut), watermarks: [model.watermark])
        // Truncating again finishes the job.
        if model.log.count > Int(cut) && Bool.random(using: &rng) {
            op += ", truncate again"
            let again = try await must("truncate again") { try await store.truncate(after: lsn) }
            try require(again == model.log.count - Int(cut), "truncating again removed \(again), expected \(model.log.count - Int(cut))")
            model.log.removeLast(model.log.count - Int(cut))
        }
    }

    func powerCutDuringWatermarkStep() async throws {
        guard !model.log.isEmpty else {
            begin("power cut during watermark (skipped: empty log)")
            return
        }
        let seq = Int.random(in: Int(model.watermark.seq)...model.log.count, using: &rng)
        let lsn = seq == 0 ? LSN.zero : model.log[seq - 1].lsn
        let cutAfter = Int.random(in: 0...5, using: &rng)
        begin("power cut after \(cutAfter) ops during setCommitWatermark(\(lsn))")
        fs.failAfter(operations: cutAfter)
        let done = (try? await store.setCommitWatermark(lsn)) != nil
        op += done ? " (finished)" : " (failed)"
        let all = model.log
        try await powerLossAndReopen(enqueued: all, atLeast: all.count, watermarks: done ? [lsn] : [model.watermark, lsn])
    }

    /// Cuts the power (if a fault has not already), stops the old store, crashes with torn
    /// writes, reopens, and re-derives the model: the store must hold a prefix of `enqueued` of
    /// at least `atLeast` records, with a watermark among `watermarks`, and no damage.
    func powerLossAndReopen(enqueued: [EncodedRecord], atLeast: Int, watermarks: [LSN]) async throws {
        fs.failAfter(operations: 0)
        await store.close()
        fs.crash(tornWrites: true, using: &rng)
        store = try await must("reopen after power loss") { try await fixture.open() }
        try require(store.damage.isEmpty, "damage after a power loss (torn tails must be cut, not reported): \(store.damage)")
        let h = Int(store.highestLSN.seq)
        if h < atLeast || h > enqueued.count {
            throw failure("after power loss highestLSN is \(store.highestLSN); expected a prefix of \(atLeast)...\(enqueued.count) records\(await matchingPrefixes(enqueued))")
        }
        try require(h == 0 || store.highestLSN == enqueued[h - 1].lsn,
                    "after power loss highestLSN is \(store.highestLSN), but record \(h) was \(enqueued[h - 1].lsn)")
        let wm = store.commitWatermark
        try require(watermarks.contains(wm), "after power loss the watermark is \(wm), expected one of \(watermarks)")
        model.log = Array(enqueued.prefix(h))
        model.watermark = wm
        op += " -> reopened with \(h) records"
        trace[trace.count - 1] += " -> reopened with \(h) records, watermark \(wm)"
    }

    /// For a failure message: which prefix lengths the store's live state matches.
    func matchingPrefixes(_ enqueued: [EncodedRecord]) async -> String {
        guard let state = try? await contents(store) else { return "" }
        let lengths = (0...enqueued.count).filter { liveState(enqueued.prefix($0)) == state }
        return "; its live state matches prefixes of length \(lengths)"
    }

    // MARK: - Invariants

    func checkInvariants() async throws {
        let s: Store = store
        try require(s.damage.isEmpty, "damage reported: \(s.damage)")
        let newest = model.newest
        for k in keys {
            let expected = newest[k].flatMap { $0.type == .delete ? nil : $0 }
            let h = try await must("head(\(k))") { try s.head(key(k)) }
            let v = try await must("get(\(k))") { try await s.value(k) }
            if let expected {
                try require(h?.lsn == expected.lsn && h?.size == UInt64(expected.value.count),
                            "head(\(k)) is \(h.map { "\($0.lsn), \($0.size)B" } ?? "nil"); model has \(expected.lsn), \(expected.value.count)B")
                try require(v == Array(expected.value), "get(\(k)) gave \(v.map { "\($0.count)B" } ?? "nil"); model has \(expected.lsn), \(expected.value.count)B")
            } else {
                try require(h == nil && v == nil, "\(k) should not exist (model: \(newest[k].map { "deleted at \($0.lsn)" } ?? "never written")) but head gives \(h.map { "\($0.lsn)" } ?? "nil"), get \(v.map { "\($0.count)B" } ?? "nil")")
            }
        }
        let pageSize = Int.random(in: 1...6, using: &rng)
        let listed = try await must("list") { try s.allKeys(pageSize: pageSize) }
        let liveKeys = model.live.keys.sorted(by: byteOrder)
        try require(listed == liveKeys, "list (page size \(pageSize)) gave \(listed); model has \(liveKeys)")

        try require(s.highestLSN == model.highest, "highestLSN is \(s.highestLSN); model's log ends at \(model.highest)")
        try require(s.lastEnqueuedLSN == model.highest, "lastEnqueuedLSN is \(s.lastEnqueuedLSN); model's log ends at \(model.highest)")
        try require(s.commitWatermark == model.watermark, "commitWatermark is \(s.commitWatermark); model has \(model.watermark)")
        try require(s.commitWatermark <= s.highestLSN, "commitWatermark \(s.commitWatermark) is above highestLSN \(s.highestLSN)")
        try require(s.compactedThrough <= s.commitWatermark, "compactedThrough \(s.compactedThrough) is above the watermark \(s.commitWatermark)")
        try require(s.pendingAppendBytes == 0, "pendingAppendBytes is \(s.pendingAppendBytes) with nothing in flight")

        try await checkStream(from: .zero)
        try await checkRecentRequests()
    }

    /// `recentRequests(window:)` gives, in log order, the records with a request id whose head
    /// timestamp is inside the window anchored at the log's last surviving record: all of them
    /// that compaction may not have dropped, and exactly all of them when no compaction
    /// planned with a later anchor (a truncation since can move the anchor back).
    func checkRecentRequests() async throws {
        let s: Store = store
        let width = Duration.nanoseconds(Int64(model.window))
        let found = try await must("recentRequests") { try await s.recentRequests(window: width) }
        let surviving = try await must("records(after: .zero)") { try await s.records(after: .zero).collect() }
        let anchor = surviving.last?.header.timestamp ?? 0
        let mayBeCompacted = model.mayBeCompacted
        var expected: [(RecentRequest, mustBeThere: Bool)] = []
        for (i, r) in model.log.enumerated() where r.header.requestID != .none && model.inWindow(r.header.timestamp, anchor: anchor) {
            expected.append((RecentRequest(requestID: r.header.requestID, lsn: r.lsn, timestamp: r.header.timestamp), !mayBeCompacted[i]))
        }
        func show(_ list: [RecentRequest]) -> String { list.map { "\($0.lsn)" }.joined(separator: " ") }
        let exact = model.compactionAnchor <= anchor
        let description = "recentRequests(window: \(model.window) ns) anchored at \(anchor) gave [\(show(found))]; the model has [\(show(expected.map(\.0)))] (compaction anchor \(model.compactionAnchor))"
        if exact {
            try require(found == expected.map(\.0), description)
            return
        }
        // A subsequence of the expected records that holds every one compaction could not drop.
        var j = 0
        for (request, mustBeThere) in expected {
            if j < found.count && found[j] == request {
                j += 1
            } else {
                try require(!mustBeThere, description + "; \(request.lsn) is missing")
            }
        }
        try require(j == found.count, description + "; \(found.count - j) unexpected")
    }

    /// `records(after:)` from `start` (nil: a random LSN not below `compactedThrough`).
    ///
    /// From `.zero`: every record equals the model's record at its seq, seqs increase, nothing
    /// is missing that compaction may not drop, and the newest version per key is the model's
    /// live state. From at or after `compactedThrough`: exactly the model's records after it.
    func checkStream(from start: LSN?) async throws {
        let s: Store = store
        let compactedThrough = s.compactedThrough
        let from: UInt64
        if let start {
            from = start.seq
        } else {
            from = UInt64.random(in: min(compactedThrough.seq, UInt64(model.log.count))...UInt64(model.log.count), using: &rng)
        }
        let startLSN = lsnAt(from)
        let records = try await must("records(after: \(startLSN)).collect()") { try await s.records(after: startLSN).collect() }
        if from >= compactedThrough.seq {
            let expected = model.log[Int(from)...]
            try require(records.count == expected.count && zip(records, expected).allSatisfy { $0.bytes == $1.bytes },
                        "records(after: \(startLSN)) with compactedThrough \(compactedThrough) gave seqs \(records.map(\.lsn.seq)); model has \(expected.map(\.lsn.seq))")
            return
        }
        // From .zero below compactedThrough: a subsequence that keeps every record compaction may not drop.
        var previous: UInt64 = 0
        var present = Set<UInt64>()
        for r in records {
            let seq = r.lsn.seq
            try require(seq > previous, "records(after: .zero) went from seq \(previous) to \(seq)")
            previous = seq
            try require(seq >= 1 && seq <= UInt64(model.log.count), "records(after: .zero) yielded seq \(seq) beyond the model's log end \(model.highest)")
            try require(r.bytes == model.log[Int(seq) - 1].bytes, "records(after: .zero): record at seq \(seq) (\(r.lsn) \(r.key.string)) differs from the model's (\(model.log[Int(seq) - 1].lsn) \(model.log[Int(seq) - 1].key.string))")
            present.insert(seq)
        }
        let mayBeCompacted = model.mayBeCompacted
        for i in model.log.indices where !present.contains(UInt64(i + 1)) {
            try require(mayBeCompacted[i], "records(after: .zero) lacks seq \(i + 1) (\(model.log[i].key.string) \(model.log[i].type)), which compaction may not drop (watermark \(model.watermark))")
        }
        let derived = liveState(records), live = model.live
        try require(derived == live, "live state derived from records(after: .zero) differs from the model's: keys \(derived.keys.sorted()) vs \(live.keys.sorted())")
        // History that compaction dropped needs a full copy.
        if compactedThrough.seq >= 2 {
            let below = lsnAt(UInt64.random(in: 1..<compactedThrough.seq, using: &rng))
            do {
                _ = try s.records(after: below)
                throw failure("records(after: \(below)) below compactedThrough \(compactedThrough) was not refused")
            } catch let error as ModelFailure {
                throw error
            } catch {
                try require(isCode(error, .historyCompacted), "records(after: \(below)): \(error)")
            }
        }
    }
}
