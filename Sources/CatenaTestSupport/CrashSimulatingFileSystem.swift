import CatenaCore
import CatenaStorage
import Synchronization

/// An in-memory ``FileSystem`` that forgets, when it "crashes", everything that was not made
/// durable — the way a power cut does. Reopening a store on a real disk proves nothing about
/// durability, because the page cache survives the reopen; reopening it on this file system after
/// ``crash(tornWrites:using:)`` does.
///
/// The model:
/// - Paths are absolute strings split on `/`; empty components are ignored (`"//a/b/"` is
///   `"/a/b"`). Relative paths are treated as absolute; `.` and `..` are plain names.
/// - Files are inodes. An open handle keeps referring to its inode after the name is removed or
///   renamed over, as on POSIX; the inode is freed when nothing refers to it any more.
/// - Every inode has *current* bytes (what reads see) and *durable* bytes (as of its last
///   ``StorageFile/sync()``).
/// - Every directory has *current* entries and *durable* entries (as of its last
///   ``syncDirectory(_:)``). Creating a file (`open(_:mode: .createNew)`, or ``lock(_:)`` of a
///   missing path), ``rename(_:to:)`` and ``remove(_:)`` change current entries only. A rename
///   between two directories is two entry changes: syncing only one of the two directories can
///   leave the file under both names, or under neither, after a crash.
/// - Directories themselves are durable the moment ``createDirectory(_:)`` returns (a
///   simplification); directories cannot be renamed or removed.
/// - ``crash(tornWrites:using:)`` rolls every directory and inode back to its durable state
///   (optionally keeping a torn, possibly garbage-ended prefix of unsynced appends), kills every
///   handle and lock from before the crash, clears all injected faults, and then the same object
///   is the rebooted machine.
///
/// Errors: a missing file or directory is ``CatenaError/Code/ioFailure`` with "no such file or
/// directory" in the message (the same code ``PosixFileSystem`` gives `ENOENT`); writing through
/// a handle opened with ``FileOpenMode/read`` is ``CatenaError/Code/ioFailure`` (as `EBADF`).
/// ``remove(_:)`` of a missing file succeeds, like ``PosixFileSystem``.
///
/// All state lives behind one `Mutex`, so the file system, its handles and its locks may be used
/// from any thread.
public final class CrashSimulatingFileSystem: FileSystem, Sendable {
    private let state = Mutex(State())

    /// Creates an empty file system holding only the root directory `/`.
    public init() {}

    // MARK: - FileSystem

    /// Creates a directory and its parents; durable immediately (no ``syncDirectory(_:)`` needed).
    public func createDirectory(_ path: String) throws(CatenaError) {
        try locked { (s) throws(CatenaError) in
            try s.checkPower("mkdir", path)
            var components: [String] = []
            for name in Self.components(of: path) {
                let parent = Self.key(components)
                components.append(name)
                let key = Self.key(components)
                if s.directories[key] != nil { continue }
                if s.directories[parent]!.current[name] != nil {
                    throw CatenaError(.ioFailure, "mkdir \(path): \(key) is not a directory")
                }
                s.directories[key] = Directory()
                s.setCurrentEntry(parent, name, .directory)
                s.setDurableEntry(parent, name, .directory)
            }
        }
    }

    /// The current names in a directory (files and subdirectories), sorted.
    public func contentsOfDirectory(_ path: String) throws(CatenaError) -> [String] {
        try locked { (s) throws(CatenaError) -> [String] in
            try s.checkPower("opendir", path)
            guard let directory = s.directories[Self.key(Self.components(of: path))] else {
                throw CatenaError(.ioFailure, "opendir \(path): no such file or directory")
            }
            return directory.current.keys.sorted()
        }
    }

    /// Whether `path` currently names a file or directory. Always `false` after a simulated
    /// power loss (``failAfter(operations:)``), since this call cannot throw.
    public func fileExists(_ path: String) -> Bool {
        state.withLock { s in
            if s.poweredOff { return false }
            let components = Self.components(of: path)
            guard let name = components.last else { return true }
            return s.directories[Self.key(components.dropLast())]?.current[name] != nil
        }
    }

    /// Opens a file; ``FileOpenMode/createNew`` adds a current (not yet durable) directory entry
    /// and counts as a mutating operation.
    public func open(_ path: String, mode: FileOpenMode) throws(CatenaError) -> any StorageFile {
        let (handle, epoch) = try locked { (s) throws(CatenaError) -> (Int, Int) in
            try s.checkPower("open", path)
            let components = Self.components(of: path)
            guard let name = components.last else {
                throw CatenaError(.ioFailure, "open \(path): is a directory")
            }
            let parent = Self.key(components.dropLast())
            guard s.directories[parent] != nil else {
                throw CatenaError(.ioFailure, "open \(path): no such file or directory")
            }
            let existing = s.directories[parent]!.current[name]
            switch mode {
            case .createNew:
                guard existing == nil else {
                    throw CatenaError(.ioFailure, "open \(path): file exists")
                }
                let inode = s.nextInode
                s.nextInode += 1
                s.inodes[inode] = Inode()
                s.setCurrentEntry(parent, name, .file(inode))
                s.didMutate()
                return s.openHandle(inode, writable: true)
            case .read, .readWrite:
                switch existing {
                case nil:
                    throw CatenaError(.ioFailure, "open \(path): no such file or directory")
                case .directory:
                    throw CatenaError(.ioFailure, "open \(path): is a directory")
                case .file(let inode):
                    return s.openHandle(inode, writable: mode == .readWrite)
                }
            }
        }
        return SimulatedFile(fileSystem: self, path: path, handle: handle, epoch: epoch)
    }

    /// Atomically renames file `from` to `to`, replacing `to`; changes current entries only, so it
    /// is undone by a crash unless the directories involved are synced.
    public func rename(_ from: String, to: String) throws(CatenaError) {
        try locked { (s) throws(CatenaError) in
            try s.checkPower("rename to \(to)", from)
            let source = Self.components(of: from)
            let target = Self.components(of: to)
            guard let sourceName = source.last, let targetName = target.last else {
                throw CatenaError(.ioFailure, "rename \(from) to \(to): cannot rename the root directory")
            }
            let sourceParent = Self.key(source.dropLast())
            let targetParent = Self.key(target.dropLast())
            switch s.directories[sourceParent]?.current[sourceName] {
            case nil:
                throw CatenaError(.ioFailure, "rename \(from) to \(to): no such file or directory")
            case .directory:
                throw CatenaError(.ioFailure, "rename \(from) to \(to): the simulator cannot rename directories")
            case .file(let inode):
                guard s.directories[targetParent] != nil else {
                    throw CatenaError(.ioFailure, "rename \(from) to \(to): no such file or directory")
                }
                if case .directory? = s.directories[targetParent]!.current[targetName] {
                    throw CatenaError(.ioFailure, "rename \(from) to \(to): is a directory")
                }
                if sourceParent != targetParent || sourceName != targetName {
                    s.setCurrentEntry(targetParent, targetName, .file(inode))
                    s.setCurrentEntry(sourceParent, sourceName, nil)
                }
                s.didMutate()
            }
        }
    }

    /// Removes a file's name (open handles keep working); succeeds if it does not exist. Changes
    /// current entries only, so it is undone by a crash unless the directory is synced.
    public func remove(_ path: String) throws(CatenaError) {
        try locked { (s) throws(CatenaError) in
            try s.checkPower("unlink", path)
            let components = Self.components(of: path)
            guard let name = components.last else {
                throw CatenaError(.ioFailure, "unlink \(path): is a directory")
            }
            let parent = Self.key(components.dropLast())
            if case .directory? = s.directories[parent]?.current[name] {
                throw CatenaError(.ioFailure, "unlink \(path): is a directory")
            }
            if s.directories[parent]?.current[name] != nil {
                s.setCurrentEntry(parent, name, nil)
            }
            s.didMutate()
        }
    }

    /// Makes the directory's current entries (creates, renames, removes) its durable entries.
    public func syncDirectory(_ path: String) throws(CatenaError) {
        try locked { (s) throws(CatenaError) in
            try s.checkPower("fsync directory", path)
            let key = Self.key(Self.components(of: path))
            guard let directory = s.directories[key] else {
                throw CatenaError(.ioFailure, "open directory \(path): no such file or directory")
            }
            for case .file(let inode) in directory.current.values {
                s.inodes[inode]!.durableLinks += 1
            }
            s.directories[key]!.durable = directory.current
            for case .file(let inode) in directory.durable.values {
                s.inodes[inode]!.durableLinks -= 1
                s.collect(inode)
            }
            s.directorySyncCount += 1
            s.didMutate()
        }
    }

    /// Takes an exclusive in-memory lock on `path`, creating an empty file there (a current, not
    /// durable, entry) if none exists. Fails with ``CatenaError/Code/directoryLocked`` while
    /// another lock on the same path is held. Not a mutating operation; a crash releases it.
    public func lock(_ path: String) throws(CatenaError) -> any FileLock {
        let (key, id, epoch) = try locked { (s) throws(CatenaError) -> (String, Int, Int) in
            try s.checkPower("open lock file", path)
            let components = Self.components(of: path)
            guard let name = components.last else {
                throw CatenaError(.ioFailure, "open lock file \(path): is a directory")
            }
            let parent = Self.key(components.dropLast())
            guard s.directories[parent] != nil else {
                throw CatenaError(.ioFailure, "open lock file \(path): no such file or directory")
            }
            switch s.directories[parent]!.current[name] {
            case .directory?:
                throw CatenaError(.ioFailure, "open lock file \(path): is a directory")
            case .file?:
                break
            case nil:
                let inode = s.nextInode
                s.nextInode += 1
                s.inodes[inode] = Inode()
                s.setCurrentEntry(parent, name, .file(inode))
            }
            let key = Self.key(components)
            guard s.locks[key] == nil else {
                throw CatenaError(.directoryLocked, "\(path) is locked by another holder (is another catena node using this data directory?)")
            }
            let id = s.nextLock
            s.nextLock += 1
            s.locks[key] = id
            return (key, id, s.epoch)
        }
        return SimulatedLock(fileSystem: self, key: key, id: id, epoch: epoch)
    }

    /// Takes the in-memory lock on `path` if the file exists (nil if it does not), creating
    /// nothing. The simulation has one kind of lock: a shared holder excludes every other holder,
    /// shared or not (enough for a reader that must keep stores out). Fails with
    /// ``CatenaError/Code/directoryLocked`` while another lock on the path is held.
    public func lockSharedIfExists(_ path: String) throws(CatenaError) -> (any FileLock)? {
        let taken = try locked { (s) throws(CatenaError) -> (String, Int, Int)? in
            try s.checkPower("open lock file", path)
            let components = Self.components(of: path)
            guard let name = components.last else {
                throw CatenaError(.ioFailure, "open lock file \(path): is a directory")
            }
            guard case .file? = s.directories[Self.key(components.dropLast())]?.current[name] else { return nil }
            let key = Self.key(components)
            guard s.locks[key] == nil else {
                throw CatenaError(.directoryLocked, "\(path) is locked by another holder (is a catena node running on this data directory?)")
            }
            let id = s.nextLock
            s.nextLock += 1
            s.locks[key] = id
            return (key, id, s.epoch)
        }
        guard let (key, id, epoch) = taken else { return nil }
        return SimulatedLock(fileSystem: self, key: key, id: id, epoch: epoch)
    }

    // MARK: - Crashing

    /// The machine loses power and reboots.
    ///
    /// Afterwards every directory's entries are its durable entries (files created but not
    /// directory-synced vanish, renames and removes not directory-synced are undone) and every
    /// file's bytes are its durable bytes. With `tornWrites`, a file whose unsynced bytes only
    /// extend its synced bytes (an append not yet synced) keeps a random-length prefix (possibly
    /// empty, possibly all) of that unsynced tail, and with probability 1/2 the last 1...16 bytes
    /// of the surviving tail are replaced with random garbage (a torn sector); the synced bytes
    /// are never damaged. Whatever survived is durable from then on.
    ///
    /// Every handle and lock from before the crash is dead (calls on handles throw
    /// ``CatenaError/Code/ioFailure``; releasing such a lock does nothing), and the power-loss and
    /// fault injections of ``failAfter(operations:)``, ``failNextWrites(_:count:)`` and
    /// ``failNextSync(count:)`` are cleared. Counters keep counting. Files are visited in
    /// creation order, so the outcome depends only on the history and on `rng`.
    public func crash<G: RandomNumberGenerator>(tornWrites: Bool, using rng: inout G) {
        state.withLock { s in
            s.epoch += 1
            s.handles = [:]
            s.locks = [:]
            s.poweredOff = false
            s.operationsBeforePowerLoss = nil
            s.failingWrites = 0
            s.failingSyncs = 0
            for key in s.directories.keys {
                s.directories[key]!.current = s.directories[key]!.durable
            }
            for id in s.inodes.keys.sorted() {
                var inode = s.inodes[id]!
                guard inode.durableLinks > 0 else {
                    s.inodes[id] = nil
                    continue
                }
                inode.currentLinks = inode.durableLinks
                inode.openHandles = 0
                let before = inode.current
                let synced = inode.durable.count
                let torn = inode.tornWriteRange
                inode.current = inode.durable
                inode.dirtyFrom = nil
                if tornWrites, let (from, to) = torn {
                    // The first `kept` bytes written since the last sync reached the disk, the
                    // last few of them garbled; the rest of the file is what was synced.
                    let kept = Int.random(in: 0...(to - from), using: &rng)
                    var image = Array(inode.durable[0..<from])
                    image.append(contentsOf: before[from..<(from + kept)])
                    if image.count < synced { image.append(contentsOf: inode.durable[image.count...]) }
                    if kept > 0 && Bool.random(using: &rng) {
                        let garbage = Int.random(in: 1...min(16, kept), using: &rng)
                        for i in (from + kept - garbage)..<(from + kept) {
                            image[i] = UInt8.random(in: 0...255, using: &rng)
                        }
                    }
                    inode.current = image
                }
                inode.durable = inode.current
                s.inodes[id] = inode
            }
        }
    }

    /// ``crash(tornWrites:using:)`` without torn writes: everything unsynced is lost exactly.
    public func crash() {
        var rng = SplitMix64(seed: 0)
        crash(tornWrites: false, using: &rng)
    }

    // MARK: - Fault injection

    /// Lets `n` more mutating operations (file `write`, `sync`, `truncate`; `open(.createNew)`,
    /// `rename`, `remove`, `syncDirectory`) succeed; after the `n`-th, every operation on the file
    /// system or its handles throws ``CatenaError/Code/ioFailure`` ("simulated power loss") until
    /// ``crash(tornWrites:using:)``. `n == 0` cuts the power at once. Operations that fail do
    /// not count.
    public func failAfter(operations n: Int) {
        precondition(n >= 0, "failAfter(operations:) needs a count >= 0, got \(n)")
        state.withLock { s in
            if n == 0 {
                s.poweredOff = true
                s.operationsBeforePowerLoss = nil
            } else {
                s.operationsBeforePowerLoss = n
            }
        }
    }

    /// Makes the next `count` `write` calls (through any handle) throw an error with `code` (for
    /// example ``CatenaError/Code/diskFull``) without writing anything.
    public func failNextWrites(_ code: CatenaError.Code, count: Int = 1) {
        precondition(count >= 0, "failNextWrites needs a count >= 0, got \(count)")
        state.withLock { s in
            s.failingWrites = count
            s.failingWriteCode = code
        }
    }

    /// Makes the next `count` file `sync()` calls throw ``CatenaError/Code/ioFailure``; the
    /// file's durable bytes stay as they were (nothing of the failed sync is made durable).
    ///
    /// With `losingDirtyPages`, a failed sync also forgets that the file's unsynced bytes are
    /// unsynced, as Linux does after a writeback error ("fsyncgate"): reads still see them, a
    /// later sync succeeds without making them durable, and after a crash the disk holds zeros
    /// where they were.
    public func failNextSync(count: Int = 1, losingDirtyPages: Bool = false) {
        precondition(count >= 0, "failNextSync needs a count >= 0, got \(count)")
        state.withLock {
            $0.failingSyncs = count
            $0.failedSyncsLoseDirtyPages = losingDirtyPages
        }
    }

    /// Whether the power is cut (by ``failAfter(operations:)``) and every operation throws.
    public var isPoweredOff: Bool { state.withLock { $0.poweredOff } }

    // MARK: - Counters

    /// How many file `sync()` calls have succeeded (directory syncs are not counted here).
    public var syncCount: Int { state.withLock { $0.syncCount } }

    /// How many ``syncDirectory(_:)`` calls have succeeded.
    public var directorySyncCount: Int { state.withLock { $0.directorySyncCount } }

    /// How many file `write` calls have succeeded.
    public var writeCount: Int { state.withLock { $0.writeCount } }

    /// How many mutating operations (the ones ``failAfter(operations:)`` counts) have succeeded.
    public var mutatingOperationCount: Int { state.withLock { $0.mutatingOperationCount } }

    /// How many file handles are open (not closed, not killed by a crash); for leak checks.
    public var openFileCount: Int { state.withLock { $0.handles.count } }

    /// How many bytes reads returned so far from files opened under a path ending with
    /// `suffix` (e.g. `".seg"`, `".hint"`): what a test needs to show that an operation reads
    /// no values. Counted since the file system was made, across crashes.
    public func bytesRead(fromPathsEndingWith suffix: String) -> Int {
        state.withLock { s in s.bytesReadByPath.reduce(0) { $0 + ($1.key.hasSuffix(suffix) ? $1.value : 0) } }
    }

    // MARK: - Inspection and corruption

    /// Overwrites bytes of the file currently named `path` (or, failing that, durably named) at
    /// `offset`, in both its current and its durable bytes, as bit rot would. Bytes past the end
    /// of either version are left out of that version. Works even while powered off.
    ///
    /// - Precondition: `path` names a file and `offset + bytes.count` is within the file.
    public func corrupt(path: String, at offset: Int, with bytes: [UInt8]) {
        state.withLock { s in
            let components = Self.components(of: path)
            let parent = Self.key(components.dropLast())
            let name = components.last ?? ""
            let entry = s.directories[parent]?.current[name] ?? s.directories[parent]?.durable[name]
            guard case .file(let id)? = entry else {
                preconditionFailure("corrupt(path:): no file at \(path)")
            }
            let inode = s.inodes[id]!
            precondition(
                offset >= 0 && offset + bytes.count <= max(inode.current.count, inode.durable.count),
                "corrupt(path:): \(offset)+\(bytes.count) is past the end of \(path)")
            for (i, byte) in bytes.enumerated() {
                if offset + i < inode.current.count { s.inodes[id]!.current[offset + i] = byte }
                if offset + i < inode.durable.count { s.inodes[id]!.durable[offset + i] = byte }
            }
        }
    }

    /// What a crash without torn writes would leave at `path`: the durable bytes of the file
    /// named `path` by the durable directory entries, or `nil` if there is none.
    public func durableContents(of path: String) -> [UInt8]? {
        state.withLock { s in
            let components = Self.components(of: path)
            guard let name = components.last,
                  case .file(let id)? = s.directories[Self.key(components.dropLast())]?.durable[name]
            else { return nil }
            return s.inodes[id]!.durable
        }
    }

    /// The current bytes (what a read sees) of the file currently named `path`, or `nil` if
    /// there is none.
    public func contents(of path: String) -> [UInt8]? {
        state.withLock { s in
            let components = Self.components(of: path)
            guard let name = components.last,
                  case .file(let id)? = s.directories[Self.key(components.dropLast())]?.current[name]
            else { return nil }
            return s.inodes[id]!.current
        }
    }

    // MARK: - Handles

    /// Runs `body` on a live handle's inode, or throws if the handle is dead, closed or the
    /// power is off.
    fileprivate func withOpenFile<T: Sendable>(
        _ file: SimulatedFile, _ operation: String,
        _ body: (inout State, _ inode: Int, _ writable: Bool) throws(CatenaError) -> T
    ) throws(CatenaError) -> T {
        try locked { (s) throws(CatenaError) -> T in
            guard file.epoch == s.epoch else {
                throw CatenaError(.ioFailure, "\(operation) \(file.path): file handle from before the simulated crash")
            }
            try s.checkPower(operation, file.path)
            guard let open = s.handles[file.handle] else {
                throw CatenaError(.ioFailure, "\(operation) \(file.path): file is closed")
            }
            return try body(&s, open.inode, open.writable)
        }
    }

    fileprivate func close(_ file: SimulatedFile) {
        state.withLock { s in
            guard file.epoch == s.epoch, let open = s.handles.removeValue(forKey: file.handle) else { return }
            s.inodes[open.inode]!.openHandles -= 1
            s.collect(open.inode)
        }
    }

    fileprivate func release(_ lock: SimulatedLock) {
        state.withLock { s in
            if lock.epoch == s.epoch && s.locks[lock.key] == lock.id {
                s.locks[lock.key] = nil
            }
        }
    }

    // MARK: - Internals

    private func locked<T: Sendable>(_ body: (inout State) throws(CatenaError) -> T) throws(CatenaError) -> T {
        try state.withLock { (s) throws(CatenaError) -> T in try body(&s) }
    }

    private static func components(of path: String) -> [String] {
        path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
    }

    private static func key<C: Collection<String>>(_ components: C) -> String {
        "/" + components.joined(separator: "/")
    }
}

/// The largest file the simulator will hold (it lives in memory).
private let maximumFileSize = 1 << 34

private struct Inode {
    var current: [UInt8] = []
    var durable: [UInt8] = []
    /// How many current / durable directory entries name this inode, and how many handles.
    var currentLinks = 0
    var durableLinks = 0
    var openHandles = 0
    /// The lowest offset at which `current` may differ from `durable` (nil: they are equal),
    /// and the end of what was written since (while the length is unchanged, only
    /// `dirtyFrom..<dirtyTo` differs). Keeping the two arrays apart and syncing only the dirty
    /// part keeps a sync O(bytes written since the last sync) and every write in place, however
    /// large the file — also for writes over a zero-filled stretch.
    var dirtyFrom: Int?
    var dirtyTo = 0

    /// A writeback error: the unsynced bytes are no longer dirty but never reached the disk,
    /// which holds zeros there (reads still see the bytes until a crash).
    mutating func loseDirtyPages() {
        guard let dirty = dirtyFrom else { return }
        if current.count == durable.count {
            let upper = min(dirtyTo, durable.count)
            if dirty < upper { durable.replaceSubrange(dirty..<upper, with: [UInt8](repeating: 0, count: upper - dirty)) }
        } else {
            let keep = min(dirty, durable.count)
            durable.removeSubrange(keep..<durable.count)
            durable.append(contentsOf: [UInt8](repeating: 0, count: max(0, current.count - keep)))
        }
        dirtyFrom = nil
    }

    mutating func markDirty(from offset: Int, to end: Int) {
        dirtyTo = dirtyFrom == nil ? end : max(dirtyTo, end)
        dirtyFrom = min(dirtyFrom ?? offset, offset)
    }

    /// Where a crash may leave a torn write: what was written since the last sync, when the
    /// file did not shrink since then; nil otherwise.
    var tornWriteRange: (from: Int, to: Int)? {
        guard let dirty = dirtyFrom, current.count >= durable.count, dirty <= durable.count else { return nil }
        return (dirty, max(dirty, min(dirtyTo, current.count)))
    }

    mutating func write(_ chunks: [[UInt8]], at start: Int, total: Int) {
        guard total > 0 else { return }
        markDirty(from: min(start, current.count), to: start + total)
        if current.count < start + total {
            current.append(contentsOf: [UInt8](repeating: 0, count: start + total - current.count))
        }
        var position = start
        for chunk in chunks {
            current.replaceSubrange(position..<(position + chunk.count), with: chunk)
            position += chunk.count
        }
    }

    mutating func truncate(to size: Int) {
        markDirty(from: min(size, current.count), to: max(size, current.count))
        if size < current.count {
            current.removeLast(current.count - size)
        } else {
            current.append(contentsOf: [UInt8](repeating: 0, count: size - current.count))
        }
    }

    /// Makes `durable` equal to `current`, copying only what changed since the last sync.
    mutating func sync() {
        guard let dirty = dirtyFrom else { return }
        if current.count == durable.count {
            let upper = min(dirtyTo, current.count)
            if dirty < upper { durable.replaceSubrange(dirty..<upper, with: current[dirty..<upper]) }
        } else {
            let keep = min(dirty, durable.count, current.count)
            durable.removeSubrange(keep..<durable.count)
            durable.append(contentsOf: current[keep...])
        }
        dirtyFrom = nil
    }
}

private enum Entry: Equatable {
    case file(Int)
    case directory
}

private struct Directory {
    var current: [String: Entry] = [:]
    var durable: [String: Entry] = [:]
}

private struct OpenFile {
    var inode: Int
    var writable: Bool
}

private struct State {
    var directories: [String: Directory] = ["/": Directory()]
    var inodes: [Int: Inode] = [:]
    var nextInode = 1
    var handles: [Int: OpenFile] = [:]
    var nextHandle = 1
    /// Incremented by every crash; handles and locks remember the epoch they were made in.
    var epoch = 0
    var locks: [String: Int] = [:]
    var nextLock = 1

    var poweredOff = false
    var operationsBeforePowerLoss: Int?
    var failingWrites = 0
    var failingWriteCode = CatenaError.Code.ioFailure
    var failingSyncs = 0
    var failedSyncsLoseDirtyPages = false

    var syncCount = 0
    var directorySyncCount = 0
    var writeCount = 0
    var mutatingOperationCount = 0
    /// Bytes returned by reads, per path a file was opened under.
    var bytesReadByPath: [String: Int] = [:]

    func checkPower(_ operation: String, _ path: String) throws(CatenaError) {
        if poweredOff { throw CatenaError(.ioFailure, "\(operation) \(path): simulated power loss") }
    }

    /// Counts a successful mutating operation and cuts the power after the last allowed one.
    mutating func didMutate() {
        mutatingOperationCount += 1
        if let remaining = operationsBeforePowerLoss {
            if remaining <= 1 {
                poweredOff = true
                operationsBeforePowerLoss = nil
            } else {
                operationsBeforePowerLoss = remaining - 1
            }
        }
    }

    mutating func openHandle(_ inode: Int, writable: Bool) -> (Int, Int) {
        let handle = nextHandle
        nextHandle += 1
        handles[handle] = OpenFile(inode: inode, writable: writable)
        inodes[inode]!.openHandles += 1
        return (handle, epoch)
    }

    mutating func setCurrentEntry(_ directory: String, _ name: String, _ entry: Entry?) {
        let old = directories[directory]!.current[name]
        directories[directory]!.current[name] = entry
        if case .file(let inode)? = entry { inodes[inode]!.currentLinks += 1 }
        if case .file(let inode)? = old {
            inodes[inode]!.currentLinks -= 1
            collect(inode)
        }
    }

    mutating func setDurableEntry(_ directory: String, _ name: String, _ entry: Entry?) {
        let old = directories[directory]!.durable[name]
        directories[directory]!.durable[name] = entry
        if case .file(let inode)? = entry { inodes[inode]!.durableLinks += 1 }
        if case .file(let inode)? = old {
            inodes[inode]!.durableLinks -= 1
            collect(inode)
        }
    }

    /// Frees an inode nothing refers to any more.
    mutating func collect(_ inode: Int) {
        guard let node = inodes[inode] else { return }
        if node.currentLinks == 0 && node.durableLinks == 0 && node.openHandles == 0 {
            inodes[inode] = nil
        }
    }
}

/// A handle on an inode of a ``CrashSimulatingFileSystem``; its state lives in the file system.
private final class SimulatedFile: StorageFile {
    let fileSystem: CrashSimulatingFileSystem
    let path: String
    let handle: Int
    let epoch: Int

    init(fileSystem: CrashSimulatingFileSystem, path: String, handle: Int, epoch: Int) {
        self.fileSystem = fileSystem
        self.path = path
        self.handle = handle
        self.epoch = epoch
    }

    deinit { fileSystem.close(self) }

    func size() throws(CatenaError) -> UInt64 {
        try fileSystem.withOpenFile(self, "fstat") { (s, inode, _) throws(CatenaError) -> UInt64 in
            UInt64(s.inodes[inode]!.current.count)
        }
    }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(CatenaError) -> Int {
        try fileSystem.withOpenFile(self, "pread") { (s, inode, _) throws(CatenaError) -> Int in
            let bytes = s.inodes[inode]!.current
            guard offset < UInt64(bytes.count) else { return 0 }
            let start = Int(offset)
            let n = min(buffer.count, bytes.count - start)
            bytes.withUnsafeBytes { raw in
                buffer.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: n)
            }
            s.bytesReadByPath[path, default: 0] += n
            return n
        }
    }

    func write(_ chunks: [[UInt8]], at offset: UInt64) throws(CatenaError) {
        try fileSystem.withOpenFile(self, "pwritev") { (s, inode, writable) throws(CatenaError) in
            guard writable else {
                throw CatenaError(.ioFailure, "pwritev \(path): file was opened read-only")
            }
            if s.failingWrites > 0 {
                s.failingWrites -= 1
                throw CatenaError(s.failingWriteCode, "pwritev \(path): simulated \(s.failingWriteCode)")
            }
            let total = chunks.reduce(0) { $0 + $1.count }
            guard offset <= UInt64(maximumFileSize - total) else {
                throw CatenaError(.ioFailure, "pwritev \(path): file too large for the simulator")
            }
            s.inodes[inode]!.write(chunks, at: Int(offset), total: total)
            s.writeCount += 1
            s.didMutate()
        }
    }

    func sync() throws(CatenaError) {
        try fileSystem.withOpenFile(self, "fsync") { (s, inode, _) throws(CatenaError) in
            if s.failingSyncs > 0 {
                s.failingSyncs -= 1
                if s.failedSyncsLoseDirtyPages { s.inodes[inode]!.loseDirtyPages() }
                throw CatenaError(.ioFailure, "fsync \(path): simulated I/O error")
            }
            s.inodes[inode]!.sync()
            s.syncCount += 1
            s.didMutate()
        }
    }

    func truncate(to size: UInt64) throws(CatenaError) {
        try fileSystem.withOpenFile(self, "ftruncate") { (s, inode, writable) throws(CatenaError) in
            guard writable else {
                throw CatenaError(.ioFailure, "ftruncate \(path): file was opened read-only")
            }
            guard size <= UInt64(maximumFileSize) else {
                throw CatenaError(.ioFailure, "ftruncate \(path): file too large for the simulator")
            }
            s.inodes[inode]!.truncate(to: Int(size))
            s.didMutate()
        }
    }

    func close() {
        fileSystem.close(self)
    }
}

/// A held lock of a ``CrashSimulatingFileSystem``; releasing it after a crash does nothing.
private final class SimulatedLock: FileLock {
    let fileSystem: CrashSimulatingFileSystem
    let key: String
    let id: Int
    let epoch: Int

    init(fileSystem: CrashSimulatingFileSystem, key: String, id: Int, epoch: Int) {
        self.fileSystem = fileSystem
        self.key = key
        self.id = id
        self.epoch = epoch
    }

    deinit { fileSystem.release(self) }

    func release() {
        fileSystem.release(self)
    }
}
