/// One operation on one key, as a client saw it: what it asked, when it asked, when (and whether)
/// it got an answer, and what a get returned. The input of ``LinearizabilityChecker``; concurrent
/// tests usually collect them with a ``HistoryRecorder``.
///
/// Each key is a register: ``Kind/put(_:)`` sets its value, ``Kind/delete`` makes it absent,
/// ``Kind/get`` reads it. Values are opaque bytes, compared byte-wise.
///
/// Rules:
/// - `invoke` is taken before the request leaves the client, `complete` after its answer
///   arrived; both are monotonic nanoseconds from one clock. An operation that completed before
///   another was invoked (`complete < invoke`, strictly) must take effect before it; equal times
///   count as concurrent.
/// - ``Outcome/ok``: a put or delete was acknowledged, or a get returned (``observed``: the value,
///   nil for not found). It has a completion time.
/// - ``Outcome/failed``: definitely not applied (refused with an error that guarantees no
///   effect). Ignored by the checker.
/// - ``Outcome/unknown``: timed out, connection lost, never answered. A put or delete of unknown
///   outcome may take effect at any time after its invocation — even after `complete`, when the
///   client gave up — or never. A get of unknown outcome observed nothing and is ignored.
public struct RegisterOperation: Hashable, Sendable, CustomStringConvertible {
    /// What the operation does to the key's register.
    public enum Kind: Hashable, Sendable {
        /// Set the value.
        case put([UInt8])
        /// Make the key absent.
        case delete
        /// Read the value (or its absence).
        case get
    }

    /// How the operation ended, as far as the client knows.
    public enum Outcome: Hashable, Sendable {
        /// Acknowledged (put, delete) or answered (get).
        case ok
        /// Definitely not applied.
        case failed
        /// May have been applied, at any time after invocation, or never.
        case unknown
    }

    /// The key's bytes (UTF-8 as sent).
    public let key: [UInt8]
    /// The client (or task) that issued it; explanations name it, the check does not use it.
    public let process: Int
    /// Put, delete or get.
    public let kind: Kind
    /// Monotonic nanoseconds when the operation was invoked.
    public let invoke: UInt64
    /// Monotonic nanoseconds when its answer arrived (or the client gave up); nil if never.
    public let complete: UInt64?
    /// Acknowledged, failed or unknown.
    public let outcome: Outcome
    /// What a get with outcome ``Outcome/ok`` returned: the value, or nil for not found.
    /// Always nil for puts and deletes.
    public let observed: [UInt8]?

    /// Creates an operation. Traps on an impossible one: `complete` before `invoke`, an ``Outcome/ok``
    /// without `complete`, or an `observed` value on a put or delete.
    public init(key: [UInt8], process: Int, kind: Kind, invoke: UInt64, complete: UInt64?,
                outcome: Outcome, observed: [UInt8]? = nil) {
        precondition(complete.map { $0 >= invoke } ?? true, "operation completes (\(complete!)) before it is invoked (\(invoke))")
        precondition(outcome != .ok || complete != nil, "an acknowledged operation needs a completion time")
        precondition(observed == nil || kind == .get, "only a get observes a value")
        self.key = key
        self.process = process
        self.kind = kind
        self.invoke = invoke
        self.complete = complete
        self.outcome = outcome
        self.observed = observed
    }

    /// Creates an operation on the UTF-8 bytes of `key`.
    public init(key: String, process: Int, kind: Kind, invoke: UInt64, complete: UInt64?,
                outcome: Outcome, observed: [UInt8]? = nil) {
        self.init(key: Array(key.utf8), process: process, kind: kind, invoke: invoke, complete: complete,
                  outcome: outcome, observed: observed)
    }

    /// E.g. `get by process 3 [t=100…250] returned "v1"`.
    public var description: String {
        let what: String
        switch kind {
        case .put(let value): what = "put(\(LinearizabilityChecker.render(value)))"
        case .delete: what = "delete"
        case .get: what = "get"
        }
        let interval = "t=\(invoke)…" + (complete.map(String.init) ?? "")
        switch outcome {
        case .ok where kind == .get:
            return "\(what) by process \(process) [\(interval)] returned \(LinearizabilityChecker.render(observed))"
        case .ok: return "\(what) by process \(process) [\(interval)]"
        case .failed: return "\(what) by process \(process) [\(interval), failed]"
        case .unknown: return "\(what) by process \(process) [\(interval), outcome unknown]"
        }
    }
}

/// The verdict of ``LinearizabilityChecker/check(_:initial:maxStates:)``.
public enum LinearizabilityResult: Hashable, Sendable {
    /// Every key's history is linearizable.
    case linearizable
    /// This key's history is not; the explanation names the first response that cannot be
    /// explained and what it could have been.
    case notLinearizable(key: String, explanation: String)
    /// The search for this key visited `maxStates` states without a verdict. Says nothing either
    /// way about the key.
    case gaveUp(key: String)
}

/// Checks that a history of puts, deletes and gets is linearizable per key (DESIGN invariant 3):
/// that for each key there is one order of the operations, agreeing with real time (an
/// operation that completed before another was invoked comes first), in which every get returns
/// the value of the last put before it (absent after a delete, or at the start), every
/// acknowledged write appears, and writes of unknown outcome appear at most once.
///
/// Keys are independent registers, so each key is checked on its own (linearizability is
/// compositional), in byte-wise key order. The search is Wing & Gong's, with Lowe's and Knossos's
/// memoization of (linearized set, value) states and pruning particular to registers (see
/// `RegisterSearch`). Typical histories — thousands of operations per key, 8 to 32 concurrent
/// clients — need one or two states per operation and take milliseconds. A pathological one is
/// cut off after `maxStates` states and reported as ``LinearizabilityResult/gaveUp(key:)``,
/// never as a verdict.
///
/// When a key is not linearizable, the checker finds the earliest response after which the
/// history stops being linearizable (the history up to a response is checked, by bisection; a
/// prefix of a linearizable history is linearizable) and, if that response is a get, which
/// values it could have returned instead. Those searches share a second budget of `maxStates`
/// states; what they cannot settle within it, the explanation says it does not know.
public enum LinearizabilityChecker {
    /// The default bound on the states the search for one key may visit (and again on those its
    /// explanation may visit): a state costs about 150 bytes and, in a debug build, about 10 µs,
    /// so a search that gives up takes a few seconds and under 100 MB.
    public static let defaultMaxStates = 500_000

    /// Checks every key of `history`; `initial` gives keys that exist at the start (absent
    /// otherwise). Returns the first key (byte-wise order) that is not linearizable; otherwise
    /// the first key the search gave up on; otherwise ``LinearizabilityResult/linearizable``.
    public static func check(_ history: [RegisterOperation], initial: [[UInt8]: [UInt8]] = [:],
                             maxStates: Int = defaultMaxStates) -> LinearizabilityResult {
        var byKey: [[UInt8]: [RegisterOperation]] = [:]
        for op in history { byKey[op.key, default: []].append(op) }
        var gaveUp: String?
        for key in byKey.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
            var checker = KeyChecker(ops: byKey[key]!, initial: initial[key], maxStates: maxStates)
            let name = String(decoding: key, as: UTF8.self)
            switch checker.check() {
            case .linearizable: continue
            case .notLinearizable(let explanation): return .notLinearizable(key: name, explanation: explanation)
            case .gaveUp: if gaveUp == nil { gaveUp = name }
            }
        }
        return gaveUp.map { .gaveUp(key: $0) } ?? .linearizable
    }

    /// A value for an explanation: quoted text if short printable UTF-8, else hex; "absent" for nil.
    static func render(_ value: [UInt8]?) -> String {
        guard let value else { return "absent" }
        if value.count <= 48, let text = String(validating: value, as: UTF8.self),
           text.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F && $0 != "\"" }) {
            return "\"\(text)\""
        }
        let hex = value.prefix(16).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        return "0x\(hex)\(value.count > 16 ? "…" : "") (\(value.count) bytes)"
    }
}

/// The check of one key: the search, and on failure the searches for the explanation, which
/// share one budget of `maxStates` states.
private struct KeyChecker {
    enum Verdict {
        case linearizable
        case notLinearizable(String)
        case gaveUp
    }

    let ops: [RegisterOperation]
    let maxStates: Int
    /// States the explanation's searches may still visit.
    var budget: Int
    /// Interned values: index 0 is absent.
    var values: [[UInt8]?] = [nil]
    var ids: [[UInt8]: Int32] = [:]
    var initial: Int32 = 0
    /// Per operation: the interned value it writes or observes (0 for failed or unanswered ones).
    var valueOf: [Int32] = []

    init(ops: [RegisterOperation], initial: [UInt8]?, maxStates: Int) {
        self.ops = ops
        self.maxStates = maxStates
        self.budget = maxStates
        self.initial = intern(initial)
        for op in ops {
            switch op.kind {
            case .put(let value): valueOf.append(intern(value))
            case .delete: valueOf.append(0)
            case .get: valueOf.append(op.outcome == .ok ? intern(op.observed) : 0)
            }
        }
    }

    private mutating func intern(_ value: [UInt8]?) -> Int32 {
        guard let value else { return 0 }
        if let id = ids[value] { return id }
        let id = Int32(values.count)
        values.append(value)
        ids[value] = id
        return id
    }

    private func isWrite(_ op: RegisterOperation) -> Bool { op.kind != .get }

    private func render(_ value: Int32) -> String { LinearizabilityChecker.render(values[Int(value)]) }

    mutating func check() -> Verdict {
        if let explanation = neverWrittenRead() { return .notLinearizable(explanation) }
        let search = makeSearch(cut: .max, maxStates: maxStates)
        switch search.run() {
        case .linearizable: return .linearizable
        case .gaveUp: return .gaveUp
        case .notLinearizable: return .notLinearizable(explain())
        }
    }

    /// The search over the operations invoked at or before `cut`, as the history stood at that
    /// moment: operations answered later count as unanswered (writes of unknown outcome, gets
    /// ignored). `override` replaces what one get observed.
    private func makeSearch(cut: UInt64, override: (op: Int, value: Int32)? = nil, maxStates: Int) -> RegisterSearch {
        var entries: [SearchEntry] = []
        entries.reserveCapacity(ops.count)
        for (i, op) in ops.enumerated() where op.invoke <= cut && op.outcome != .failed {
            let answered = op.outcome == .ok && op.complete! <= cut
            if op.kind == .get {
                guard answered else { continue }
                let value = override?.op == i ? override!.value : valueOf[i]
                entries.append(SearchEntry(invoke: op.invoke, complete: op.complete!, required: true,
                                           isRead: true, value: value, source: i))
            } else {
                entries.append(SearchEntry(invoke: op.invoke, complete: answered ? op.complete! : .max,
                                           required: answered, isRead: false, value: valueOf[i], source: i))
            }
        }
        entries.sort { ($0.invoke, $0.source) < ($1.invoke, $1.source) }
        return RegisterSearch(entries: entries, valueCount: values.count, initial: initial, maxStates: maxStates)
    }

    /// A search for the explanation, charged to the budget; gives up at once when it is spent.
    private mutating func explanationSearch(cut: UInt64, override: (op: Int, value: Int32)? = nil) -> RegisterSearch.Verdict {
        guard budget > 0 else { return .gaveUp }
        let search = makeSearch(cut: cut, override: override, maxStates: budget)
        let verdict = search.run()
        budget -= search.statesVisited
        return verdict
    }

    // MARK: - Explanations

    /// A get that returned a value no write (other than a failed one) had been invoked to write by
    /// the time it returned, and which is not the initial value: not linearizable, whatever the
    /// order. The earliest such get, explained; nil if there is none.
    private func neverWrittenRead() -> String? {
        var firstWrite: [Int32: UInt64] = [:]
        for (i, op) in ops.enumerated() where isWrite(op) && op.outcome != .failed {
            firstWrite[valueOf[i]] = min(firstWrite[valueOf[i]] ?? .max, op.invoke)
        }
        var culprit: Int?
        for (i, op) in ops.enumerated() where op.kind == .get && op.outcome == .ok {
            let v = valueOf[i]
            if v == initial || (firstWrite[v] ?? .max) <= op.complete! { continue }
            if culprit == nil || op.complete! < ops[culprit!].complete! { culprit = i }
        }
        guard let culprit else { return nil }
        let start = initial == 0 ? "the key starts absent" : "the key starts as \(render(initial))"
        let what = valueOf[culprit] == 0 ? "no delete" : "no put of that value"
        return "\(ops[culprit]): \(what) had been invoked by the time it returned (\(start)). " + context(of: culprit)
    }

    /// Finds the earliest response after which the history is no longer linearizable, and says
    /// what is wrong with it. Called once the whole history failed.
    private mutating func explain() -> String {
        let times = Set(ops.compactMap { $0.outcome == .ok ? $0.complete : nil }).sorted()
        // Invariant: the history up to times[hi] (the whole history for hi == times.count) is
        // not linearizable. Histories up to times before lo are linearizable, or gave up.
        var lo = 0, hi = times.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if explanationSearch(cut: times[mid]) == .notLinearizable { hi = mid } else { lo = mid + 1 }
        }
        guard hi < times.count else {
            return "The history is not linearizable; no shorter prefix of it could be shown not to be within \(maxStates) states."
        }
        let cut = times[hi]
        let count = ops.count { $0.invoke <= cut }
        var text = "The history up to t=\(cut) (\(count) operations invoked) is not linearizable"
        if hi > 0 {
            // An earlier failing response would have been found: this is linearizable or gives up.
            if explanationSearch(cut: times[hi - 1]) == .linearizable {
                text += "; up to the response before (t=\(times[hi - 1])) it is"
            } else {
                text += "; whether it is up to the response before (t=\(times[hi - 1])) is unknown (gave up)"
            }
        }
        text += ". "
        let culprits = ops.indices.filter { ops[$0].outcome == .ok && ops[$0].complete == cut }
        for i in culprits.prefix(3) {
            text += ops[i].kind == .get ? explainRead(i, cut: cut) : "Completing at t=\(cut): \(ops[i]). "
        }
        if culprits.count > 3 { text += "(\(culprits.count - 3) more operations completed at t=\(cut).) " }
        return text.trimmingSuffixSpace()
    }

    /// The get `r` is the response that breaks linearizability: which values would not have.
    private mutating func explainRead(_ r: Int, cut: UInt64) -> String {
        var text = "It cannot be explained: \(ops[r]). "
        var fine: [Int32] = [], unchecked = 0
        for v in possibleValues(at: r).prefix(12) {
            switch explanationSearch(cut: cut, override: (r, v)) {
            case .linearizable: fine.append(v)
            case .gaveUp: unchecked += 1
            case .notLinearizable: break
            }
        }
        if fine.isEmpty {
            text += "None of the values of the latest or concurrent writes would have been linearizable there either"
        } else {
            text += "It could have returned: " + fine.map(render).joined(separator: ", ")
        }
        text += unchecked > 0 ? " (\(unchecked) more values not checked within the bound). " : ". "
        return text + context(of: r)
    }

    /// Values the get `r` could plausibly have seen, other than what it saw: those of writes (not
    /// failed) invoked before it returned and not yet overwritten for sure when it was invoked,
    /// the latest invoked first, and the initial value if nothing had been written for sure.
    private func possibleValues(at r: Int) -> [Int32] {
        let read = ops[r]
        // Acknowledged writes that completed before the get was invoked; the latest invocation
        // among them overwrote every one of them that completed before it.
        let before = ops.indices.filter { isWrite(ops[$0]) && ops[$0].outcome == .ok && ops[$0].complete! < read.invoke }
        let latestInvoke = before.map { ops[$0].invoke }.max()
        let writes = ops.indices.filter { i in
            let op = ops[i]
            guard isWrite(op), op.outcome != .failed, op.invoke <= read.complete! else { return false }
            if op.outcome == .ok, let latestInvoke, op.complete! < latestInvoke { return false }
            return true
        }
        var result: [Int32] = []
        for i in writes.sorted(by: { ops[$0].invoke > ops[$1].invoke }) where !result.contains(valueOf[i]) {
            result.append(valueOf[i])
        }
        if latestInvoke == nil && !result.contains(initial) { result.append(initial) }
        return result.filter { $0 != valueOf[r] }
    }

    /// The last write acknowledged before operation `i` was invoked, and the writes concurrent with it.
    private func context(of i: Int) -> String {
        let op = ops[i]
        let end = op.complete ?? .max
        let last = ops.indices
            .filter { isWrite(ops[$0]) && ops[$0].outcome == .ok && ops[$0].complete! < op.invoke }
            .max { ops[$0].complete! < ops[$1].complete! }
        var text = "Last write acknowledged before it was invoked: " + (last.map { "\(ops[$0])" } ?? "none") + ". "
        let concurrent = ops.indices.filter { j in
            j != i && isWrite(ops[j]) && ops[j].outcome != .failed && ops[j].invoke <= end
                && (ops[j].outcome != .ok || ops[j].complete! >= op.invoke)
        }
        text += "Writes concurrent with it (or of unknown outcome, invoked before it returned): "
        text += concurrent.isEmpty ? "none." : concurrent.prefix(8).map { "\(ops[$0])" }.joined(separator: "; ")
            + (concurrent.count > 8 ? "; and \(concurrent.count - 8) more." : ".")
        return text
    }
}

private extension String {
    func trimmingSuffixSpace() -> String {
        var s = self
        while s.last == " " { s.removeLast() }
        return s
    }
}
