import CatenaCore
import Glibc

// The few POSIX file operations this module needs: whole-file reads, crash-safe replacement
// (temp, fsync, rename, directory fsync), `mkdir -p` and `flock`. CatenaStorage has its own behind
// its `FileSystem` protocol; this module does not depend on the storage engine, so it keeps these
// dozen calls here.


enum PosixIO {
    /// The bytes of the file at `path`, or nil if it does not exist.
    static func readFile(_ path: String) throws(CatenaError) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw posixError(errno, "open", path)
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return bytes }
            if n < 0 {
                if errno == EINTR { continue }
                throw posixError(errno, "read", path)
            }
            bytes.append(contentsOf: buffer[0..<n])
        }
    }

    /// Replaces `path` with `bytes` so that a crash leaves either the old file or the new one:
    /// write `path.tmp`, fsync it, rename it over `path`, fsync the directory.
    static func replaceDurably(_ path: String, with bytes: [UInt8], directory: String) throws(CatenaError) {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw posixError(errno, "open", tmp) }
        do throws(CatenaError) {
            try writeAll(fd, bytes, path: tmp)
            guard fsync(fd) == 0 else { throw posixError(errno, "fsync", tmp) }
            guard close(fd) == 0 else { throw posixError(errno, "close", tmp) }
        } catch {
            close(fd)
            unlink(tmp)
            throw error
        }
        guard rename(tmp, path) == 0 else {
            let err = errno
            unlink(tmp)
            throw posixError(err, "rename to \(path)", tmp)
        }
        try syncDirectory(directory)
    }

    /// Writes all of `bytes` to `fd`, resuming after partial writes and `EINTR`.
    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(CatenaError) {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                throw posixError(errno, "write", path)
            }
            done += n
        }
    }

    /// Removes `path`; a missing file is not an error.
    static func remove(_ path: String) throws(CatenaError) {
        guard unlink(path) == 0 || errno == ENOENT else { throw posixError(errno, "unlink", path) }
    }

    /// Makes the directory's entries (creates, renames, removes) durable.
    static func syncDirectory(_ path: String) throws(CatenaError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw posixError(errno, "open directory", path) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw posixError(errno, "fsync directory", path) }
    }

    /// Creates `path` and any missing parents (`mkdir -p`), fsyncing the parent of each directory
    /// it creates so the new directory survives a crash.
    static func createDirectories(_ path: String) throws(CatenaError) {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            let parent = current.isEmpty ? "/" : current
            current += "/" + part
            if mkdir(current, 0o755) == 0 {
                try syncDirectory(parent)
            } else if errno != EEXIST {
                throw posixError(errno, "mkdir", current)
            }
        }
    }

    /// Takes an exclusive `flock` on `path` (created if missing) without waiting: the open
    /// descriptor holding it (closing it releases the lock), or nil if another holder has it.
    static func tryExclusiveLock(_ path: String) throws(CatenaError) -> Int32? {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw posixError(errno, "open lock file", path) }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let err = errno
            if err == EINTR { continue }
            close(fd)
            if err == EWOULDBLOCK { return nil }
            throw posixError(err, "flock", path)
        }
        return fd
    }

    /// Runs `body` holding an exclusive `flock` on `path` (created if missing), waiting for other
    /// holders — other processes, or other threads of this one — to let go. Returns nil without
    /// running `body` if the directory `path` would live in does not exist.
    static func withExclusiveLock<R>(_ path: String, _ body: () throws(CatenaError) -> R) throws(CatenaError) -> R? {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw posixError(errno, "open lock file", path)
        }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            if errno != EINTR { throw posixError(errno, "flock", path) }
        }
        return try body()
    }
}
