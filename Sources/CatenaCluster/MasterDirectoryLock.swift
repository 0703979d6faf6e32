import CatenaCore
import Glibc
import Synchronization

/// A master's hold on its data directory: an exclusive `flock` on `<directory>/LOCK`, taken when
/// the master starts and held until it stops (or its process ends), so that a second master
/// started on the same directory fails at once instead of both running one chain from one
/// state file. The storage engine holds a node's data directory the same way.
public final class MasterDirectoryLock: Sendable {
    /// The lock file, `<directory>/LOCK`.
    public let path: String
    /// The open descriptor holding the lock; nil once released.
    private let descriptor: Mutex<Int32?>

    private init(path: String, descriptor: Int32) {
        self.path = path
        self.descriptor = Mutex(descriptor)
    }

    deinit { release() }

    /// Takes the lock on `directory`, creating the directory (and its parents) and the lock file
    /// if missing. Fails with ``CatenaError/Code/directoryLocked`` if another holder — another
    /// process, or another master in this one — has it.
    public static func acquire(_ directory: String) throws(CatenaError) -> MasterDirectoryLock {
        try PosixIO.createDirectories(directory)
        let path = directory + "/LOCK"
        guard let fd = try PosixIO.tryExclusiveLock(path) else {
            throw CatenaError(.directoryLocked, "\(path) is locked by another process: is another catena master using the data directory \(directory)? Stop it, or give this master another data directory")
        }
        return MasterDirectoryLock(path: path, descriptor: fd)
    }

    /// Releases the lock; releasing it again does nothing.
    public func release() {
        let fd = descriptor.withLock { d in
            defer { d = nil }
            return d
        }
        if let fd { close(fd) }
    }
}
