import CatenaCore
import Synchronization

/// `catena bench --verify`: what this run wrote to each key and when, and the check of every
/// read against it.
///
/// Each key's writes (puts and deletes) are kept with the time they were invoked and, once
/// acknowledged, their LSN and the time of the acknowledgement. A read that began at `start`
/// and ended at `end` must show at least the newest write acknowledged before `start` (no
/// lost acknowledged write, no going back), nothing this run did not write once it has written
/// the key, nothing not yet invoked at `end` (no value from the future), and, for a value, the
/// bytes of the write its stamp names at that write's LSN. Writes that failed are ambiguous
/// (they may have applied): they never make a read wrong, they only excuse one.
///
/// The checks are those of a linearizable register per key, judged by real time and the
/// cluster's LSN order, one read at a time: cheap enough to run under full load. The
/// simulation's checker searches whole histories; this one catches what a running cluster
/// should never show a client.
public final class LoadVerifier: Sendable {
    /// The run's stamp id.
    public let run: UInt64
    private let stripes: [Stripe]
    private let issued: Mutex<[UInt32: UInt64]>
    private let problems = Mutex<[String]>([])
    private let problemCount = Atomic<Int>(0)
    private let checkedReads = Atomic<Int>(0)
    /// Problems kept to print; the rest are counted.
    static let keptProblems = 100
    /// Writes kept per key (the oldest settled ones are forgotten).
    static let historyLimit = 64

    final class Stripe: Sendable {
        let keys = Mutex<[Int: History]>([:])
    }

    /// One key's writes, and what the forgotten ones can still excuse.
    struct History: Sendable {
        var writes: [Write] = []
        /// The highest LSN of a forgotten acknowledged delete.
        var forgottenDelete: LSN?
        /// A forgotten delete never acknowledged (it may have applied, at any LSN).
        var forgottenUnsettledDelete = false
    }

    /// One write of this run.
    struct Write: Sendable {
        var stamp: LoadStamp
        var isDelete: Bool
        var checksum: UInt64
        var invoked: Int64
        var lsn: LSN?
        var acknowledged: Int64?
        var pending: Bool
    }

    /// A read's outcome, as the verifier checks it.
    public enum Observation: Sendable {
        /// A get's value: its LSN, content checksum and bytes.
        case value(lsn: LSN, checksum: UInt64, bytes: [UInt8])
        /// A head's or a list's entry: LSN and content checksum, no bytes.
        case info(lsn: LSN, checksum: UInt64)
        /// No object under the key.
        case absent
    }

    public init(run: UInt64) {
        self.run = run
        stripes = (0..<64).map { _ in Stripe() }
        issued = Mutex([:])
    }

    /// Reads checked so far.
    public var reads: Int { checkedReads.load(ordering: .relaxed) }

    /// Problems found so far.
    public var problemTotal: Int { problemCount.load(ordering: .relaxed) }

    /// The first ``keptProblems`` problems, each a line naming the key.
    public var problemLines: [String] { problems.withLock { $0 } }

    private func stripe(_ key: Int) -> Stripe { stripes[key % stripes.count] }

    /// Notes a write about to be sent: `stamp` (its sequence new for its writer), at `time`.
    public func invoke(key: Int, stamp: LoadStamp, isDelete: Bool, checksum: UInt64, at time: Int64) {
        issued.withLock { $0[stamp.writer] = max($0[stamp.writer] ?? 0, stamp.sequence) }
        let reused: Bool = stripe(key).keys.withLock { keys in
            var history = keys[key, default: History()]
            let reused = history.writes.contains { $0.stamp == stamp }
            history.writes.append(Write(stamp: stamp, isDelete: isDelete, checksum: checksum, invoked: time, lsn: nil, acknowledged: nil, pending: true))
            if history.writes.count > Self.historyLimit { Self.forgetOldest(&history) }
            keys[key] = history
            return reused
        }
        // The generator's bug, not the cluster's: it would make one write pass for another.
        if reused { report("key \(key): the load generator used the stamp \(stamp) twice") }
    }

    /// Notes the write `stamp` acknowledged at `lsn`, at `time`; checks it came after every
    /// write of the key acknowledged before it was invoked.
    public func acknowledge(key: Int, name: String, stamp: LoadStamp, lsn: LSN, at time: Int64) {
        let problem: String? = stripe(key).keys.withLock { keys in
            guard var history = keys[key], let i = history.writes.lastIndex(where: { $0.stamp == stamp }) else { return nil }
            history.writes[i].lsn = lsn
            history.writes[i].acknowledged = time
            history.writes[i].pending = false
            keys[key] = history
            let writes = history.writes
            let invoked = writes[i].invoked
            if let earlier = writes.filter({ ($0.acknowledged ?? .max) < invoked }).compactMap(\.lsn).max(), earlier >= lsn {
                return "\(name): a write invoked after the write at \(earlier) was acknowledged got \(lsn), not a later LSN"
            }
            return nil
        }
        if let problem { report(problem) }
    }

    /// Notes that the write `stamp` failed: it may or may not have applied.
    public func fail(key: Int, stamp: LoadStamp) {
        stripe(key).keys.withLock { keys in
            guard let i = keys[key]?.writes.lastIndex(where: { $0.stamp == stamp }) else { return }
            keys[key]!.writes[i].pending = false
        }
    }

    /// Checks what a read of key `key` (named `name`) that began at `start` and ended at `end`
    /// saw; returns whether it passed (problems are kept and counted).
    @discardableResult
    public func check(key: Int, name: String, observed: Observation, start: Int64, end: Int64) -> Bool {
        checkedReads.add(1, ordering: .relaxed)
        let issued = self.issued.withLock { $0 }
        let problem = stripe(key).keys.withLock { keys in
            Self.problem(in: keys[key] ?? History(), run: run, issued: issued, observed: observed, start: start, end: end)
        }
        guard let problem else { return true }
        report("\(name): \(problem)")
        return false
    }

    private func report(_ line: String) {
        problemCount.add(1, ordering: .relaxed)
        problems.withLock { if $0.count < Self.keptProblems { $0.append(line) } }
    }

    /// What is wrong with `observed`, given the key's writes; nil if nothing.
    static func problem(in history: History, run: UInt64, issued: [UInt32: UInt64], observed: Observation, start: Int64, end: Int64) -> String? {
        let writes = history.writes
        // The newest write acknowledged before the read began: the read must show it or a later one.
        let floor = writes.filter { ($0.acknowledged ?? .max) < start }.max { $0.lsn! < $1.lsn! }
        switch observed {
        case .absent:
            guard let floor, !floor.isDelete else { return nil }
            // A delete that could come after it: acknowledged at a later LSN, or unsettled and
            // invoked before the read ended.
            let excused = writes.contains { w in
                w.isDelete && (w.lsn.map { $0 > floor.lsn! } ?? (w.invoked < end))
            } || history.forgottenUnsettledDelete || history.forgottenDelete.map { $0 > floor.lsn! } ?? false
            return excused ? nil : "not found, but the put at \(floor.lsn!) (\(floor.stamp)) was acknowledged before the read began"
        case .value(let lsn, let checksum, _), .info(let lsn, let checksum):
            if let floor, lsn < floor.lsn! {
                return "read the version at \(lsn), older than the \(floor.isDelete ? "delete" : "put") at \(floor.lsn!) acknowledged before the read began"
            }
            if let same = writes.first(where: { $0.lsn == lsn }) {
                if same.isDelete { return "read a value at \(lsn), where this run's delete was acknowledged" }
                if same.checksum != checksum {
                    return "the version at \(lsn) has checksum \(checksum.hex16), but \(same.stamp) wrote \(same.checksum.hex16) there"
                }
            }
            guard case .value(_, _, let bytes) = observed else { return nil }
            guard let stamp = LoadStamp(reading: bytes) else {
                return floor == nil ? nil : "read \(bytes.count) bytes at \(lsn) that carry no stamp of the load generator"
            }
            guard stamp.run == run else {
                // Another run's value: fine until this run has written the key.
                return floor == nil ? nil : "read a value of another run (\(stamp)) at \(lsn) after this run's write was acknowledged"
            }
            guard stamp.sequence <= issued[stamp.writer] ?? 0 else { return "read a value from the future: \(stamp) was not yet invoked" }
            guard stamp.patternMatches(bytes) else { return "the value at \(lsn) (\(stamp)) differs from what was written" }
            if let write = writes.first(where: { $0.stamp == stamp }) {
                if write.invoked > end { return "read a value from the future: \(stamp) was invoked after the read ended" }
                if let written = write.lsn, written != lsn { return "read \(stamp) at \(lsn), but it was acknowledged at \(written)" }
            }
            return nil
        }
    }

    /// Drops the oldest settled write that is not the newest acknowledged one. A dropped delete
    /// is summed up (its LSN, or that it never settled): the floor of a read can only fall when
    /// writes are forgotten, but a delete it forgets could have excused a missing key.
    private static func forgetOldest(_ history: inout History) {
        let writes = history.writes
        let newest = writes.indices.filter { writes[$0].lsn != nil }.max { writes[$0].lsn! < writes[$1].lsn! }
        guard let i = writes.indices.first(where: { !writes[$0].pending && $0 != newest }) else { return }
        let gone = history.writes.remove(at: i)
        if gone.isDelete {
            if let lsn = gone.lsn { history.forgottenDelete = max(history.forgottenDelete ?? lsn, lsn) } else { history.forgottenUnsettledDelete = true }
        }
    }

    /// Keys this run has written (or tried to).
    public var writtenKeys: [Int] {
        stripes.flatMap { $0.keys.withLock { Array($0.keys) } }.sorted()
    }
}
