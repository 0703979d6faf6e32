#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Maps an `errno` from `operation` on `path` to a ``CatenaError``: `diskFull` (ENOSPC, EDQUOT),
/// `permissionDenied` (EACCES, EPERM, EROFS), otherwise `ioFailure`; the message names the
/// operation, the path and the system's text.
public func posixError(_ err: Int32, _ operation: String, _ path: String) -> CatenaError {
    let text = String(cString: strerror(err))
    let message = "\(operation) \(path): \(text) (errno \(err))"
    switch err {
    case ENOSPC, EDQUOT: return CatenaError(.diskFull, message)
    case EACCES, EPERM, EROFS: return CatenaError(.permissionDenied, message)
    default: return CatenaError(.ioFailure, message)
    }
}
