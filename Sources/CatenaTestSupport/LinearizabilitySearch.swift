/// One operation of one key's register as the search sees it: values interned to small integers
/// (0 is "absent"), failed operations and unanswered gets already dropped.
struct SearchEntry {
    /// When the operation was invoked.
    var invoke: UInt64
    /// When it completed; `UInt64.max` for an optional write (no completion bound).
    var complete: UInt64
    /// Whether every linearization must contain it (acknowledged writes, answered gets).
    /// Optional entries are writes of unknown outcome: they may take effect once, at any time
    /// after their invocation, or never.
    var required: Bool
    /// A get (observing `value`); otherwise a put of `value` or, for value 0, a delete.
    var isRead: Bool
    /// The interned value written or observed.
    var value: Int32
    /// Index of the operation in the key's history.
    var source: Int
}

/// The Wing & Gong backtracking search for one key's register, with the improvements of Lowe
/// ("Testing for linearizability", 2017) and Knossos, and pruning particular to registers.
/// Every rule below only drops orders that some order it keeps can replace, so the verdict is
/// that of the plain search (the tests check it against one on thousands of small histories).
///
/// - A state is (the set of linearized operations, the register's value); states already
///   explored are memoized and never explored again. A value no unlinearized get saw counts as
///   one value, "unobservable".
/// - Only operations invoked no later than the earliest completion among the unlinearized
///   required ones are candidates for the next step (any other order would put an operation
///   before one that completed before it was invoked).
/// - A candidate get that observes the current value is linearized at once, without branching:
///   moving such a get earlier never breaks a linearization (it changes no state, and nothing
///   unlinearized must precede it).
/// - Dead ends: a candidate get that saw a value which is not the current one and which no
///   write left can write; a write that overwrites a value some unlinearized get saw and that
///   no write left can write again.
/// - Blind writes — candidate acknowledged writes of a value no unlinearized get saw — never
///   branch: they are invisible wherever they go as long as a write follows at once, and moving
///   a candidate earlier is always allowed, so they all go together right before the next write
///   chosen (or alone, when the next write is one of them).
/// - Any other write is tried now only if a candidate get waits for its value, or it has the
///   earliest completion (a get may enter the candidates behind it), or another write left (or
///   the current value) can serve its value's gets: otherwise the next step would be a write
///   that hides it, and its gets could never be linearized.
/// - Of candidate acknowledged writes of one value only the one that completes first is tried,
///   and of candidate writes of unknown outcome of one value only the latest invoked: each can
///   stand in for the others later.
/// - A write of unknown outcome is tried only where a candidate get of its value can follow it
///   at once: in any linearization, the step after it is a get of its value, or a write or
///   nothing (then it is invisible and can be dropped). Once no unlinearized get saw its value
///   it can never be useful again; it counts as done, so that states differing only in it are
///   one memoized state.
///
/// Candidates are tried in this order: acknowledged writes whose value a candidate get waits
/// for, other acknowledged writes (each group by completion, the most urgent first), writes of
/// unknown outcome, blind writes alone. The search stops after visiting `maxStates` distinct
/// states.
final class RegisterSearch {
    enum Verdict: Equatable {
        case linearizable
        case notLinearizable
        case gaveUp
    }

    /// One memoized state: the register value and the done sets of required and optional
    /// entries, each stored as its words from the one holding its lowest undone entry to its last
    /// non-zero one (everything below the lowest undone entry is done, so this is canonical).
    private struct StateKey: Hashable {
        var state: Int32
        var lowRequired: Int32
        var lowOptional: Int32
        /// How many of `words` belong to the required set.
        var split: Int32
        var words: [UInt64]
    }

    /// One step of a linearization, taken from a level of the search.
    private enum Step {
        /// A get (an index in `required`).
        case read(Int)
        /// The level's blind writes, then this acknowledged write (an index in `required`).
        case write(Int)
        /// The level's blind writes, then this write of unknown outcome (an index in `optional`).
        case unknownWrite(Int)
        /// The level's blind writes alone.
        case blindWrites
    }

    /// What to restore when a step is undone.
    private struct Undo {
        var state: Int32
        var lowRequired: Int
        var lowOptional: Int
        /// Optional writes that became useless (marked done) with this step.
        var killed: [Int] = []
    }

    /// A level of the depth-first search: a state, and the steps still to try from it.
    private struct Level {
        /// The step that led here from the level below (nil at the root), the blind writes it
        /// applied, and how to undo it.
        var step: Step?
        var stepBlind: [Int]
        var undo: Undo
        /// The candidate acknowledged writes no unlinearized get waits for (see the type's notes).
        var blind: [Int]
        /// Steps to try from this level, and the next one to try.
        var steps: [Step]
        var next: Int
    }

    /// Acknowledged writes and answered gets, by invocation.
    private let required: [SearchEntry]
    /// Writes of unknown outcome, by invocation.
    private let optional: [SearchEntry]
    /// Per value: indices in `optional` of its writes (ascending, so by invocation).
    private let optionalWriters: [[Int]]
    private let maxStates: Int

    private var requiredDone: [UInt64]
    /// Bit i: optional entry i was linearized, or can no longer be useful.
    private var optionalDone: [UInt64]
    private var lowRequired = 0
    private var lowOptional = 0
    private var state: Int32
    private var requiredLeft: Int
    /// Per value: required gets of that value not linearized.
    private var readsPending: [Int32]
    /// Per value: writes of that value, required or optional, not done.
    private var writersLeft: [Int32]
    private var memo = Set<StateKey>()

    /// Distinct states visited so far.
    var statesVisited: Int { memo.count }

    /// Prepares a search; `entries` must be sorted by invocation time. Optional writes whose value
    /// no get observes are dropped here: they can never be useful.
    init(entries: [SearchEntry], valueCount: Int, initial: Int32, maxStates: Int) {
        var pending = [Int32](repeating: 0, count: valueCount)
        for e in entries where e.isRead { pending[Int(e.value)] += 1 }
        let required = entries.filter(\.required)
        let optional = entries.filter { !$0.required && pending[Int($0.value)] > 0 }
        var writers = [[Int]](repeating: [], count: valueCount)
        var writersLeft = [Int32](repeating: 0, count: valueCount)
        for e in required where !e.isRead { writersLeft[Int(e.value)] += 1 }
        for (i, e) in optional.enumerated() {
            writersLeft[Int(e.value)] += 1
            writers[Int(e.value)].append(i)
        }
        self.required = required
        self.optional = optional
        self.optionalWriters = writers
        self.maxStates = maxStates
        self.requiredDone = [UInt64](repeating: 0, count: (required.count + 63) / 64)
        self.optionalDone = [UInt64](repeating: 0, count: (optional.count + 63) / 64)
        self.state = initial
        self.requiredLeft = required.count
        self.readsPending = pending
        self.writersLeft = writersLeft
    }

    /// Runs the search to a verdict.
    func run() -> Verdict {
        if requiredLeft == 0 { return .linearizable }
        memo.insert(key())
        let (blind, steps) = candidates()
        var stack = [Level(step: nil, stepBlind: [], undo: Undo(state: state, lowRequired: 0, lowOptional: 0),
                           blind: blind, steps: steps, next: 0)]
        while let top = stack.indices.last {
            guard stack[top].next < stack[top].steps.count else {
                let level = stack.removeLast()
                if let step = level.step { undo(step, level.stepBlind, level.undo) }
                continue
            }
            let step = stack[top].steps[stack[top].next]
            stack[top].next += 1
            let stepBlind: [Int]
            if case .read = step { stepBlind = [] } else { stepBlind = stack[top].blind }
            let undo = apply(step, stepBlind)
            if requiredLeft == 0 { return .linearizable }
            // Writes that overwrote a value some unlinearized get saw, which nothing left can
            // write again: that get can never be linearized.
            let previous = Int(undo.state)
            if state != undo.state && readsPending[previous] > 0 && writersLeft[previous] == 0 {
                self.undo(step, stepBlind, undo)
                continue
            }
            guard memo.insert(key()).inserted else {
                self.undo(step, stepBlind, undo)
                continue
            }
            if memo.count > maxStates { return .gaveUp }
            let (blind, steps) = candidates()
            stack.append(Level(step: step, stepBlind: stepBlind, undo: undo, blind: blind, steps: steps, next: 0))
        }
        return .notLinearizable
    }

    // MARK: - State

    private static func contains(_ bits: [UInt64], _ i: Int) -> Bool { bits[i >> 6] & (1 << UInt64(i & 63)) != 0 }
    private static func insert(_ bits: inout [UInt64], _ i: Int) { bits[i >> 6] |= 1 << UInt64(i & 63) }
    private static func remove(_ bits: inout [UInt64], _ i: Int) { bits[i >> 6] &= ~(1 << UInt64(i & 63)) }

    /// Appends the canonical words of `bits` above `low` to `words`.
    private static func append(_ bits: [UInt64], from low: Int, to words: inout [UInt64]) {
        let first = low >> 6
        guard first < bits.count else { return }
        var last = bits.count - 1
        while last > first && bits[last] == 0 { last -= 1 }
        words += bits[first...last]
    }

    private func key() -> StateKey {
        var words: [UInt64] = []
        Self.append(requiredDone, from: lowRequired, to: &words)
        let split = words.count
        Self.append(optionalDone, from: lowOptional, to: &words)
        // A value no unlinearized get saw is as good as any other such value.
        let canonical = readsPending[Int(state)] == 0 ? -1 : state
        return StateKey(state: canonical, lowRequired: Int32(lowRequired), lowOptional: Int32(lowOptional),
                        split: Int32(split), words: words)
    }

    /// Takes a step (after the blind writes `blind`, unless it is a get); returns how to undo it.
    private func apply(_ step: Step, _ blind: [Int]) -> Undo {
        var undo = Undo(state: state, lowRequired: lowRequired, lowOptional: lowOptional)
        if case .read(let i) = step {
            Self.insert(&requiredDone, i)
            requiredLeft -= 1
            let v = Int(required[i].value)
            readsPending[v] -= 1
            if readsPending[v] == 0 {
                for w in optionalWriters[v] where !Self.contains(optionalDone, w) {
                    Self.insert(&optionalDone, w)
                    writersLeft[v] -= 1
                    undo.killed.append(w)
                }
            }
        } else {
            for w in blind { applyRequiredWrite(w) }
            switch step {
            case .write(let i): applyRequiredWrite(i)
            case .unknownWrite(let o):
                Self.insert(&optionalDone, o)
                state = optional[o].value
                writersLeft[Int(state)] -= 1
            case .read, .blindWrites: break
            }
        }
        while lowRequired < required.count && Self.contains(requiredDone, lowRequired) { lowRequired += 1 }
        while lowOptional < optional.count && Self.contains(optionalDone, lowOptional) { lowOptional += 1 }
        return undo
    }

    private func applyRequiredWrite(_ i: Int) {
        Self.insert(&requiredDone, i)
        requiredLeft -= 1
        state = required[i].value
        writersLeft[Int(state)] -= 1
    }

    private func undoRequiredWrite(_ i: Int) {
        Self.remove(&requiredDone, i)
        requiredLeft += 1
        writersLeft[Int(required[i].value)] += 1
    }

    private func undo(_ step: Step, _ blind: [Int], _ undo: Undo) {
        switch step {
        case .read(let i):
            Self.remove(&requiredDone, i)
            requiredLeft += 1
            let v = Int(required[i].value)
            readsPending[v] += 1
            writersLeft[v] += Int32(undo.killed.count)
            for w in undo.killed { Self.remove(&optionalDone, w) }
        case .write(let i):
            undoRequiredWrite(i)
        case .unknownWrite(let o):
            Self.remove(&optionalDone, o)
            writersLeft[Int(optional[o].value)] += 1
        case .blindWrites:
            break
        }
        for w in blind { undoRequiredWrite(w) }
        state = undo.state
        lowRequired = undo.lowRequired
        lowOptional = undo.lowOptional
    }

    /// The steps that may come next, in the order to try them, and the blind writes that come
    /// with every step but a get: a single get when one observing the current value is a
    /// candidate, nothing at a dead end (see the type's notes).
    private func candidates() -> (blind: [Int], steps: [Step]) {
        // Required entries are sorted by invocation; the scan stops at the first one invoked
        // after the earliest completion among undone ones seen so far. Every entry scanned is a
        // candidate: the completion that bounds the scan belongs to an entry invoked no earlier
        // than any entry before it.
        var bound = UInt64.max
        var writes: [Int] = [], blind: [Int] = []
        var readValues: [Int32] = []
        var i = lowRequired
        while i < required.count && required[i].invoke <= bound {
            if !Self.contains(requiredDone, i) {
                let e = required[i]
                bound = min(bound, e.complete)
                if !e.isRead {
                    if readsPending[Int(e.value)] == 0 { blind.append(i) } else { writes.append(i) }
                } else if e.value == state {
                    return ([], [.read(i)])
                } else if writersLeft[Int(e.value)] == 0 {
                    return ([], [])  // nothing left can write what it saw
                } else if !readValues.contains(e.value) {
                    readValues.append(e.value)
                }
            }
            i += 1
        }
        // Closures below capture locals only: capturing `self` copies the whole search in
        // unoptimized builds, which is what tests run.
        let required = self.required
        writes.sort { (required[$0].complete, $0) < (required[$1].complete, $1) }
        // Of candidate writes of one value, the one that completes first stands for them all.
        var seen: [Int32] = []
        var steps: [Step] = [], unawaited: [Step] = []
        for w in writes where !seen.contains(required[w].value) {
            let v = required[w].value
            seen.append(v)
            if readValues.contains(v) {
                steps.append(.write(w))
            } else if required[w].complete == bound || writersLeft[Int(v)] > 1 || v == state {
                // Not awaited: unless it bounds the window (a get may enter behind it) it would be
                // overwritten before anyone reads it, so its gets need another writer of its value.
                unawaited.append(.write(w))
            }
        }
        steps += unawaited
        for v in readValues {
            if let w = latestUsableOptionalWriter(of: v, invokedBy: bound) { steps.append(.unknownWrite(w)) }
        }
        if !blind.isEmpty { steps.append(.blindWrites) }
        return (blind, steps)
    }

    /// The optional write of `v` invoked last at or before `bound` that is not done.
    private func latestUsableOptionalWriter(of v: Int32, invokedBy bound: UInt64) -> Int? {
        let writers = optionalWriters[Int(v)]
        // Binary search: the first writer invoked after `bound`.
        var lo = 0, hi = writers.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if optional[writers[mid]].invoke <= bound { lo = mid + 1 } else { hi = mid }
        }
        while lo > 0 {
            lo -= 1
            if !Self.contains(optionalDone, writers[lo]) { return writers[lo] }
        }
        return nil
    }
}
