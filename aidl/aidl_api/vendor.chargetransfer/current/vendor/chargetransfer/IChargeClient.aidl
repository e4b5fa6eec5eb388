package vendor.chargetransfer;

/**
 * A token a client hands to IChargeTransfer.registerClient: the service watches it with a binder
 * death notification, so the client's charges are handled the moment its process dies.
 * It has no methods; only its lifetime matters.
 */
@VintfStability
interface IChargeClient {
}
