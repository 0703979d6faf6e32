import CatenaCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// File-system helpers for benchmarks: scratch directories, their removal, and where a path lives.
public enum ScratchSpace {
    /// The directory temporary scratch directories are made in: `$TMPDIR`, else `/var/tmp`
    /// (on disk, unlike a `/tmp` that may be tmpfs).
    public static var defaultParent: String {
        if let t = getenv("TMPDIR"), t[0] != 0 { return String(cString: t) }
        return "/var/tmp"
    }

    /// Creates a new, uniquely named directory under `parent` (mkdtemp) and returns its path.
    public static func makeTemporaryDirectory(in parent: String = defaultParent, prefix: String = "catena-bench") throws(CatenaError) -> String {
        let base = parent.hasSuffix("/") ? String(parent.dropLast()) : parent
        var template = Array((base + "/" + prefix + ".XXXXXX").utf8CString)
        let ok = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) != nil }
        guard ok else { throw posix(errno, "mkdtemp in", base) }
        return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Creates `path` if it does not exist (one level).
    public static func ensureDirectory(_ path: String) throws(CatenaError) {
        if mkdir(path, 0o755) != 0 && errno != EEXIST { throw posix(errno, "mkdir", path) }
    }

    /// Removes `path` and everything under it. Missing paths are not an error.
    public static func removeTree(_ path: String) throws(CatenaError) {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return }
            throw posix(errno, "lstat", path)
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            guard let dir = opendir(path) else { throw posix(errno, "opendir", path) }
            var names: [String] = []
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
                }
                if name != "." && name != ".." { names.append(name) }
            }
            closedir(dir)
            for name in names { try removeTree(path + "/" + name) }
            guard rmdir(path) == 0 else { throw posix(errno, "rmdir", path) }
        } else {
            guard unlink(path) == 0 || errno == ENOENT else { throw posix(errno, "unlink", path) }
        }
    }

    /// Flushes dirty data of all file systems (`sync()`; `syncfs` is not exported by Glibc's
    /// Swift module), so that write-back and discards left by an earlier phase (e.g. removing
    /// its files) do not land inside the next timed phase. `path` is the directory concerned.
    public static func settle(_ path: String) {
        _ = path
        sync()
    }

    /// The mount that holds `path`: device, mount point and file-system type, from
    /// `/proc/mounts` (longest matching mount point). Nil where that file does not exist.
    public static func mount(of path: String) -> MountInfo? {
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let real = realpath(path, &resolved) != nil ? String(decoding: resolved.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : path
        guard let f = fopen("/proc/mounts", "r") else { return nil }
        defer { fclose(f) }
        var best: MountInfo?
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, f) > 0, let line {
            let fields = String(cString: line).split(separator: " ")
            guard fields.count >= 3 else { continue }
            let point = unescapeMountField(String(fields[1]))
            let matches = point == "/" || real == point || real.hasPrefix(point + "/")
            if matches && point.count >= (best?.mountPoint.count ?? -1) {
                best = MountInfo(device: String(fields[0]), mountPoint: point, type: String(fields[2]))
            }
        }
        return best
    }

    /// `/proc/mounts` escapes space, tab, newline and backslash as octal.
    private static func unescapeMountField(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count, let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func posix(_ err: Int32, _ operation: String, _ path: String) -> CatenaError {
        let code: CatenaError.Code = switch err {
        case ENOSPC, EDQUOT: .diskFull
        case EACCES, EPERM, EROFS: .permissionDenied
        default: .ioFailure
        }
        return CatenaError(code, "\(operation) \(path): \(String(cString: strerror(err))) (errno \(err))")
    }
}

/// A mounted file system.
public struct MountInfo: Hashable, Sendable, CustomStringConvertible {
    /// The device (or source) that is mounted.
    public var device: String
    /// Where it is mounted.
    public var mountPoint: String
    /// The file-system type, e.g. `ext4`.
    public var type: String

    public var description: String { "\(type) on \(device), mounted at \(mountPoint)" }
}
