import CatenaCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How ``FileSystem/open(_:mode:)`` opens a file.
public enum FileOpenMode: Sendable {
    /// Read only; the file must exist.
    case read
    /// Read and write; the file must exist.
    case readWrite
    /// Create a new file for reading and writing; fails if it exists.
    case createNew
}

/// The file operations the store performs, and nothing else.
///
/// Every call blocks; the store makes them from its own threads, never from Swift's
/// cooperative pool. The production implementation is ``PosixFileSystem``; tests use a
/// simulation that forgets every write, create, rename and remove that was not synced when it
/// "crashes" — the only honest way to prove durability (the page cache survives a reopen).
public protocol FileSystem: Sendable {
    /// Creates a directory (and its parents) if it does not exist.
    func createDirectory(_ path: String) throws(CatenaError)
    /// The names (not paths) of the entries of a directory.
    func contentsOfDirectory(_ path: String) throws(CatenaError) -> [String]
    /// Whether `path` exists.
    func fileExists(_ path: String) -> Bool
    /// Opens a file.
    func open(_ path: String, mode: FileOpenMode) throws(CatenaError) -> any StorageFile
    /// Atomically renames `from` to `to`, replacing `to`. Durable after ``syncDirectory(_:)``.
    func rename(_ from: String, to: String) throws(CatenaError)
    /// Removes a file. Durable after ``syncDirectory(_:)``.
    func remove(_ path: String) throws(CatenaError)
    /// Makes the directory's entries (creates, renames, removes) durable (fsync of the directory).
    func syncDirectory(_ path: String) throws(CatenaError)
    /// Takes an exclusive lock on `path` (creating it), held until the returned lock is released.
    /// Fails with ``CatenaError/Code/directoryLocked`` if another holder has it.
    func lock(_ path: String) throws(CatenaError) -> any FileLock
    /// Takes a shared lock on `path` if the file exists (nil if it does not), creating and
    /// changing nothing: what a reader of a stopped node's data directory holds, so that no
    /// store opens the directory while it reads. Fails with
    /// ``CatenaError/Code/directoryLocked`` while an exclusive lock (an open store) is held.
    func lockSharedIfExists(_ path: String) throws(CatenaError) -> (any FileLock)?
}

/// An open file.
public protocol StorageFile: AnyObject, Sendable {
    /// The path it was opened with.
    var path: String { get }
    /// The file's current size.
    func size() throws(CatenaError) -> UInt64
    /// Reads up to `buffer.count` bytes at `offset`; returns how many were read (fewer at end of file).
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(CatenaError) -> Int
    /// Writes all of `chunks`, back to back, starting at `offset`.
    func write(_ chunks: [[UInt8]], at offset: UInt64) throws(CatenaError)
    /// Makes everything written so far, and the file's length, durable (`fdatasync`: file
    /// timestamps may stay behind).
    func sync() throws(CatenaError)
    /// Cuts or extends the file to `size` bytes.
    func truncate(to size: UInt64) throws(CatenaError)
    /// Closes the file; later calls fail.
    func close()
}

/// A held exclusive lock.
public protocol FileLock: AnyObject, Sendable {
    /// Releases the lock.
    func release()
}

extension StorageFile {
    /// Reads exactly `count` bytes at `offset`, or fewer only if the file ends first.
    public func read(at offset: UInt64, count: Int) throws(CatenaError) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = try result.withUnsafeMutableBytes { raw in
                Result { () throws(CatenaError) -> Int in
                    try read(at: offset + UInt64(done), into: UnsafeMutableRawBufferPointer(rebasing: raw[done...]))
                }
            }.get()
            if n == 0 { break }
            done += n
        }
        if done < count { result.removeLast(count - done) }
        return result
    }

    /// Writes `bytes` at `offset`.
    public func write(_ bytes: [UInt8], at offset: UInt64) throws(CatenaError) {
        try write([bytes], at: offset)
    }
}


/// The real file system: POSIX calls with `O_CLOEXEC`, `pread`, `pwritev`, `fdatasync` (`fsync`
/// for directories), `flock`.
public struct PosixFileSystem: FileSystem {
    /// Creates the file system.
    public init() {}

    public func createDirectory(_ path: String) throws(CatenaError) {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw posixError(errno, "mkdir", current)
            }
        }
    }

    public func contentsOfDirectory(_ path: String) throws(CatenaError) -> [String] {
        guard let dir = opendir(path) else { throw posixError(errno, "opendir", path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    public func fileExists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    public func open(_ path: String, mode: FileOpenMode) throws(CatenaError) -> any StorageFile {
        let flags: Int32
        switch mode {
        case .read: flags = O_RDONLY | O_CLOEXEC
        case .readWrite: flags = O_RDWR | O_CLOEXEC
        case .createNew: flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC
        }
        let fd = Glibc.open(path, flags, 0o644)
        guard fd >= 0 else { throw posixError(errno, "open", path) }
        return PosixFile(fd: fd, path: path)
    }

    public func rename(_ from: String, to: String) throws(CatenaError) {
        guard Glibc.rename(from, to) == 0 else { throw posixError(errno, "rename to \(to)", from) }
    }

    public func remove(_ path: String) throws(CatenaError) {
        guard unlink(path) == 0 || errno == ENOENT else { throw posixError(errno, "unlink", path) }
    }

    public func syncDirectory(_ path: String) throws(CatenaError) {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw posixError(errno, "open directory", path) }
        defer { Glibc.close(fd) }
        guard fsync(fd) == 0 else { throw posixError(errno, "fsync directory", path) }
    }

    public func lock(_ path: String) throws(CatenaError) -> any FileLock {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw posixError(errno, "open lock file", path) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let err = errno
            Glibc.close(fd)
            if err == EWOULDBLOCK {
                throw CatenaError(.directoryLocked, "\(path) is locked by another process (is another catena node using this data directory?)")
            }
            throw posixError(err, "flock", path)
        }
        return PosixLock(fd: fd)
    }

    public func lockSharedIfExists(_ path: String) throws(CatenaError) -> (any FileLock)? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw posixError(errno, "open lock file", path)
        }
        guard flock(fd, LOCK_SH | LOCK_NB) == 0 else {
            let err = errno
            Glibc.close(fd)
            if err == EWOULDBLOCK {
                throw CatenaError(.directoryLocked, "\(path) is locked by another process (is a catena node running on this data directory?)")
            }
            throw posixError(err, "flock", path)
        }
        return PosixLock(fd: fd)
    }
}

/// A POSIX file descriptor: immutable after init, positional syscalls only (thread-safe), and
/// the closed flag behind a mutex — so it is `Sendable`.
final class PosixFile: StorageFile, Sendable {
    let fd: Int32
    let path: String
    private let closed = Mutex(false)

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { if !closed.withLock({ $0 }) { Glibc.close(fd) } }

    func size() throws(CatenaError) -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw posixError(errno, "fstat", path) }
        return UInt64(st.st_size)
    }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(CatenaError) -> Int {
        while true {
            let n = pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
            if n >= 0 { return n }
            if errno != EINTR { throw posixError(errno, "pread", path) }
        }
    }

    func write(_ chunks: [[UInt8]], at offset: UInt64) throws(CatenaError) {
        var position = offset
        var index = 0
        // pwritev in groups of at most IOV_MAX buffers; partial writes resume where they stopped.
        while index < chunks.count {
            let group = Array(chunks[index..<min(chunks.count, index + 512)])
            var skip = 0
            let total = group.reduce(0) { $0 + $1.count }
            while skip < total {
                let n = try Self.withIOVecs(group, skipping: skip) { (iov) throws(CatenaError) -> Int in
                    while true {
                        let n = pwritev(fd, iov.baseAddress, Int32(iov.count), off_t(position))
                        if n >= 0 { return n }
                        if errno != EINTR { throw posixError(errno, "pwritev", path) }
                    }
                }
                skip += n
                position += UInt64(n)
            }
            index += group.count
        }
    }

    /// Calls `body` with iovecs over `chunks`, leaving out the first `skip` bytes.
    private static func withIOVecs<R>(
        _ chunks: [[UInt8]], skipping skip: Int, _ body: (UnsafeBufferPointer<iovec>) throws(CatenaError) -> R
    ) throws(CatenaError) -> R {
        var iovecs: [iovec] = []
        iovecs.reserveCapacity(chunks.count)
        func step(_ i: Int, _ skip: Int) throws(CatenaError) -> R {
            if i == chunks.count {
                return try iovecs.withUnsafeBufferPointer { (p) throws(CatenaError) -> R in try body(p) }
            }
            let chunk = chunks[i]
            if skip >= chunk.count { return try step(i + 1, skip - chunk.count) }
            let result = chunk.withUnsafeBytes { raw in
                Result { () throws(CatenaError) -> R in
                    iovecs.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress! + skip), iov_len: raw.count - skip))
                    return try step(i + 1, 0)
                }
            }
            return try result.get()
        }
        return try step(0, skip)
    }

    func sync() throws(CatenaError) {
        // The data and what reading it back needs (length, block map); not the timestamps.
        guard fdatasync(fd) == 0 else { throw posixError(errno, "fdatasync", path) }
    }

    func truncate(to size: UInt64) throws(CatenaError) {
        guard ftruncate(fd, off_t(size)) == 0 else { throw posixError(errno, "ftruncate", path) }
    }

    func close() {
        let wasOpen = closed.withLock { c in
            defer { c = true }
            return !c
        }
        if wasOpen { Glibc.close(fd) }
    }
}

/// A held `flock`; closing the descriptor releases the lock.
final class PosixLock: FileLock, Sendable {
    private let fd: Int32
    private let released = Mutex(false)
    init(fd: Int32) { self.fd = fd }
    deinit { release() }
    func release() {
        let wasHeld = released.withLock { r in
            defer { r = true }
            return !r
        }
        if wasHeld { Glibc.close(fd) }
    }
}
