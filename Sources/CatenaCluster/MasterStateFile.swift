import CatenaCore
import Foundation

/// The master's durable state for one chain: the current configuration, the history of epochs,
/// and the standbys. The master persists it before acting on it.
///
/// A state is well formed when the cluster id has ``NodeID/isValidIdentifier(_:)`` form, the
/// chain id is at least 1, member ids are distinct, standby ids are distinct and none is a
/// member, every node catching up is a member, and ``epochHistory`` is non-empty, strictly
/// increasing, and ends with the configuration's epoch — every epoch the master ever activated
/// is in it. ``MasterStateFile`` refuses to save a state that is not, and reports a stored one
/// that is not as corruption.
public struct MasterState: Hashable, Sendable {
    /// The format version of `master.json` this build writes and reads.
    public static let formatVersion = 1

    /// The chain's current configuration: cluster, chain, epoch and members in order.
    public var configuration: ChainConfiguration
    /// Every epoch of the chain, oldest first; the last is the configuration's.
    public var epochHistory: [EpochStart]
    /// Nodes the master knows that are not in the chain: added by an operator and not yet caught
    /// up, or members removed after a failure that may rejoin. A standby is appended as the new
    /// tail once it has caught up; it never holds a lease and is never announced as a member.
    public var standbys: [ChainMember]
    /// Members appended as the tail that have not yet shown they hold every write committed
    /// before they joined (they were appended up to `catchUpLagRecords` behind): the chain is
    /// never left with only these. Kept here so that a restarted master does not take them for
    /// members holding everything.
    public var catchingUp: Set<NodeID>

    /// Creates a state.
    public init(configuration: ChainConfiguration, epochHistory: [EpochStart], standbys: [ChainMember] = [],
                catchingUp: Set<NodeID> = []) {
        self.configuration = configuration
        self.epochHistory = epochHistory
        self.standbys = standbys
        self.catchingUp = catchingUp
    }

    /// A chain's first state: `configuration` and a history holding only its epoch.
    public init(initial configuration: ChainConfiguration) {
        self.init(configuration: configuration, epochHistory: [EpochStart(epoch: configuration.epoch)])
    }

    /// The cluster id (the configuration's).
    public var clusterID: String { configuration.clusterID }
    /// The chain id (the configuration's).
    public var chainID: ChainID { configuration.chainID }
    /// The current epoch (the configuration's).
    public var epoch: UInt64 { configuration.epoch }

    /// What makes this state malformed, or nil if it is well formed.
    public func problem() -> String? {
        if !NodeID.isValidIdentifier(clusterID) { return "cluster id '\(clusterID)' must be 1 to 64 characters of A-Z a-z 0-9 . _ -" }
        if chainID < 1 { return "chain id must be at least 1" }
        let members = Set(configuration.members.map(\.id))
        if members.count != configuration.members.count { return "the configuration lists a member twice" }
        var seen: Set<NodeID> = []
        for s in standbys {
            if members.contains(s.id) { return "standby \(s.id) is also a member" }
            if !seen.insert(s.id).inserted { return "the standbys list \(s.id) twice" }
        }
        if let stray = catchingUp.subtracting(members).min(by: { $0.rawValue < $1.rawValue }) {
            return "\(stray) is catching up but not a member"
        }
        guard let last = epochHistory.last else { return "the epoch history is empty" }
        for (a, b) in zip(epochHistory, epochHistory.dropFirst()) where a.epoch >= b.epoch {
            return "the epoch history is not increasing (\(a.epoch) then \(b.epoch))"
        }
        if last.epoch != epoch { return "the epoch history ends at \(last.epoch), but the configuration's epoch is \(epoch)" }
        return nil
    }
}

/// Where the master keeps its state: the one operation every change goes through is a
/// compare-and-swap on the epoch. ``MasterStateFile`` (a local file under `flock`) is the
/// embedded implementation; an external consensus store (etcd: a transaction comparing the
/// stored epoch, then a put) implements the same two calls, so that several masters can share
/// one state and the one whose swap fails knows it was overtaken (docs/ARCHITECTURE.md).
public protocol MasterStateStore: Sendable {
    /// Where the state lives, for logs (a path, an etcd key).
    var location: String { get }

    /// The stored state, or nil if there is none; a state of another cluster or chain is
    /// ``CatenaError/Code/identityMismatch``.
    func load(clusterID: String, chainID: ChainID) throws(CatenaError) -> MasterState?

    /// Stores `new` only if the stored epoch is `expectedEpoch` (nil: only if nothing is stored);
    /// otherwise ``CatenaError/Code/staleEpoch`` and nothing is stored. Atomic.
    func compareAndSwap(expectedEpoch: UInt64?, new: MasterState) throws(CatenaError)
}

/// The master's state on local disk: `<directory>/master.json`, replaced crash-safely (write
/// `master.json.tmp`, fsync it, rename it over `master.json`, fsync the directory), so a crash at
/// any point leaves either the old state or the new one.
///
/// Every operation holds an exclusive `flock` on `<directory>/master.lock`, so
/// ``compareAndSwap(expectedEpoch:new:)`` is atomic against other threads and processes. That
/// compare-and-swap is the seam where an external consensus store (etcd) can replace the file.
///
/// The file is JSON:
/// ```json
/// {
///   "chain" : 1,
///   "cluster" : "local",
///   "configuration" : { "epoch" : 2, "members" : [ { "address" : "127.0.0.1:7002", "id" : "n2" } ] },
///   "format" : 1,
///   "history" : [ { "epoch" : 1, "firstSeq" : 1 }, { "epoch" : 2 } ],
///   "standbys" : [ { "address" : "127.0.0.1:7001", "id" : "n1" } ]
/// }
/// ```
///
/// `standbys` is left out when there are none, and a file without it has none (files written
/// before standbys existed load unchanged); so is `catchingUp` (the ids of members that may lack
/// committed writes, sorted).
public struct MasterStateFile: MasterStateStore {
    /// The directory holding the state.
    public let directory: String

    /// The state file, `<directory>/master.json`.
    public var path: String { directory + "/master.json" }
    /// The state file's path.
    public var location: String { path }
    /// Where a save writes before renaming, `<directory>/master.json.tmp`.
    var temporaryPath: String { path + ".tmp" }
    /// The lock file, `<directory>/master.lock`.
    var lockPath: String { directory + "/master.lock" }

    /// A handle on the state in `directory` (nothing is read or created yet).
    public init(directory: String) {
        self.directory = directory
    }

    /// The stored state, or nil if there is none (no file, or no directory).
    ///
    /// A leftover `master.json.tmp` — a save interrupted before its rename — is ignored and
    /// removed. A file that is not a well-formed state is ``CatenaError/Code/corruption``; one of
    /// another format version is ``CatenaError/Code/unsupportedVersion``. Both name the path.
    public func load() throws(CatenaError) -> MasterState? {
        let result = try PosixIO.withExclusiveLock(lockPath) { () throws(CatenaError) -> MasterState? in
            try PosixIO.remove(temporaryPath)
            return try read()
        }
        return result ?? nil
    }

    /// The stored state, or nil if there is none, checking that it belongs to `clusterID` and
    /// `chainID`: a state of another cluster or chain is ``CatenaError/Code/identityMismatch``
    /// (a data directory copied or shared by mistake).
    public func load(clusterID: String, chainID: ChainID) throws(CatenaError) -> MasterState? {
        guard let state = try load() else { return nil }
        guard state.clusterID == clusterID, state.chainID == chainID else {
            throw CatenaError(.identityMismatch, "\(path) holds the state of cluster '\(state.clusterID)' chain \(state.chainID), not of cluster '\(clusterID)' chain \(chainID)")
        }
        return state
    }

    /// Replaces the stored state with `state`, durably, creating the directory (and its parents)
    /// if missing. A malformed state is refused with ``CatenaError/Code/invalidArgument``.
    public func save(_ state: MasterState) throws(CatenaError) {
        let bytes = try encode(state)
        try PosixIO.createDirectories(directory)
        let saved: Void? = try PosixIO.withExclusiveLock(lockPath) { () throws(CatenaError) in
            try PosixIO.replaceDurably(path, with: bytes, directory: directory)
        }
        guard saved != nil else { throw CatenaError(.ioFailure, "\(directory) vanished while saving the master state") }
    }

    /// Saves `new` only if the stored epoch is `expectedEpoch` (nil: only if nothing is stored
    /// yet); otherwise throws ``CatenaError/Code/staleEpoch`` naming the stored epoch and saves
    /// nothing. The check and the save are atomic.
    ///
    /// Also refused: a `new` state of another cluster or chain than the stored one
    /// (``CatenaError/Code/identityMismatch``), and one whose epoch is below `expectedEpoch` —
    /// epochs never go back (``CatenaError/Code/invalidArgument``).
    public func compareAndSwap(expectedEpoch: UInt64?, new: MasterState) throws(CatenaError) {
        if let expectedEpoch, new.epoch < expectedEpoch {
            throw CatenaError(.invalidArgument, "\(path): the new state's epoch \(new.epoch) is below the expected \(expectedEpoch); epochs never go back")
        }
        let bytes = try encode(new)
        try PosixIO.createDirectories(directory)
        let swapped: Void? = try PosixIO.withExclusiveLock(lockPath) { () throws(CatenaError) in
            try PosixIO.remove(temporaryPath)
            let stored = try read()
            guard stored?.epoch == expectedEpoch else {
                let found = stored.map { "epoch \($0.epoch) is stored" } ?? "no state is stored"
                let wanted = expectedEpoch.map { "epoch \($0)" } ?? "none"
                throw CatenaError(.staleEpoch, "\(path): \(found), expected \(wanted); someone else changed the configuration")
            }
            if let stored, stored.clusterID != new.clusterID || stored.chainID != new.chainID {
                throw CatenaError(.identityMismatch, "\(path) holds the state of cluster '\(stored.clusterID)' chain \(stored.chainID), not of cluster '\(new.clusterID)' chain \(new.chainID)")
            }
            try PosixIO.replaceDurably(path, with: bytes, directory: directory)
        }
        guard swapped != nil else { throw CatenaError(.ioFailure, "\(directory) vanished while saving the master state") }
    }

    // MARK: Encoding

    private func encode(_ state: MasterState) throws(CatenaError) -> [UInt8] {
        if let problem = state.problem() {
            throw CatenaError(.invalidArgument, "refusing to save a malformed master state to \(path): \(problem)")
        }
        let stored = StoredState(
            format: MasterState.formatVersion,
            cluster: state.clusterID,
            chain: state.chainID,
            configuration: .init(epoch: state.epoch, members: state.configuration.members.map { .init(id: $0.id.rawValue, address: $0.address) }),
            history: state.epochHistory.map { .init(epoch: $0.epoch, firstSeq: $0.firstSeq) },
            standbys: state.standbys.isEmpty ? nil : state.standbys.map { .init(id: $0.id.rawValue, address: $0.address) },
            catchingUp: state.catchingUp.isEmpty ? nil : state.catchingUp.map(\.rawValue).sorted()
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        do {
            return Array(try encoder.encode(stored)) + [0x0A]
        } catch {
            preconditionFailure("encoding plain integers and strings as JSON cannot fail: \(error)")
        }
    }

    /// Reads and decodes `master.json`; the caller holds the lock.
    private func read() throws(CatenaError) -> MasterState? {
        guard let bytes = try PosixIO.readFile(path) else { return nil }
        let data = Data(bytes)
        let decoder = JSONDecoder()
        let probe: FormatProbe
        do {
            probe = try decoder.decode(FormatProbe.self, from: data)
        } catch {
            throw CatenaError(.corruption, "\(path): not a master state file: \(Self.explain(error))")
        }
        guard let format = probe.format else {
            throw CatenaError(.corruption, "\(path): not a master state file: it has no format field")
        }
        guard format == MasterState.formatVersion else {
            throw CatenaError(.unsupportedVersion, "\(path): format \(format) is not supported; this build reads master state format \(MasterState.formatVersion)")
        }
        let stored: StoredState
        do {
            stored = try decoder.decode(StoredState.self, from: data)
        } catch {
            throw CatenaError(.corruption, "\(path): damaged master state: \(Self.explain(error))")
        }
        let state: MasterState
        do throws(CatenaError) {
            var members: [ChainMember] = []
            for m in stored.configuration.members {
                members.append(ChainMember(id: try NodeID(m.id), address: m.address))
            }
            var standbys: [ChainMember] = []
            for s in stored.standbys ?? [] {
                standbys.append(ChainMember(id: try NodeID(s.id), address: s.address))
            }
            var catchingUp: Set<NodeID> = []
            for id in stored.catchingUp ?? [] {
                catchingUp.insert(try NodeID(id))
            }
            let configuration = try ChainConfiguration(clusterID: stored.cluster, chainID: stored.chain, epoch: stored.configuration.epoch, members: members)
            state = MasterState(configuration: configuration, epochHistory: stored.history.map { EpochStart(epoch: $0.epoch, firstSeq: $0.firstSeq) },
                                standbys: standbys, catchingUp: catchingUp)
        } catch {
            throw CatenaError(.corruption, "\(path): damaged master state: \(error.message)")
        }
        if let problem = state.problem() {
            throw CatenaError(.corruption, "\(path): damaged master state: \(problem)")
        }
        return state
    }

    /// A decoding error in one line: what is wrong, and where in the JSON.
    private static func explain(_ error: any Error) -> String {
        func at(_ path: [any CodingKey]) -> String {
            path.isEmpty ? "" : " at " + path.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
        }
        switch error {
        case DecodingError.keyNotFound(let key, let context):
            return "missing '\(key.stringValue)'\(at(context.codingPath))"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return context.debugDescription + at(context.codingPath)
        case DecodingError.dataCorrupted(let context):
            let underlying = context.underlyingError.map { " (\($0))" } ?? ""
            return context.debugDescription + at(context.codingPath) + underlying
        default:
            return "\(error)"
        }
    }
}

/// The first thing read from `master.json`: its format, before anything format-specific.
private struct FormatProbe: Decodable {
    var format: Int?
}

/// `master.json`, format 1.
private struct StoredState: Codable {
    struct Configuration: Codable {
        var epoch: UInt64
        var members: [Member]
    }
    struct Member: Codable {
        var id: String
        var address: String
    }
    struct Epoch: Codable {
        var epoch: UInt64
        var firstSeq: UInt64?
    }
    var format: Int
    var cluster: String
    var chain: UInt32
    var configuration: Configuration
    var history: [Epoch]
    /// Absent: no standbys.
    var standbys: [Member]?
    /// Absent: no member catching up.
    var catchingUp: [String]?
}
