"""Typed Python client for the Mycelium credits backend (TFC, ThreeFold Credits) on Supabase.

    from mycelium_client import MyceliumClient

    with MyceliumClient.from_env() as client:
        client.auth.sign_in("ada@example.com", "...")
        print(client.credits.format(client.credits.balance().balance))
        client.credits.transfer(friend_id, "12.50", memo="lunch")
        hit = next(client.marketplace.search("ubuntu", category="compute", sort="price_asc"))
        order = client.orders.place({hit.id: 1})

Business rules live in SQL; this package gives them a typed face: pydantic models with `Decimal`
amounts, errors mapped from the SQL's stable reasons, safe retries, and balance changes over
Realtime (`credits.watch`) or, for trusted services, from PostgreSQL (`mycelium_client.feeds`).
Namespaces: `auth`, `credits`, `marketplace` (the catalogue), `orders` (buying and selling), `admin`.
"""

from mycelium_client._http import RetryPolicy
from mycelium_client._realtime import WatchSettings
from mycelium_client.admin import Admin, AsyncAdmin
from mycelium_client.amounts import AmountLike
from mycelium_client.auth import AsyncAuth, Auth
from mycelium_client.client import AsyncMyceliumClient, MyceliumClient
from mycelium_client.credits import AsyncCredits, Credits
from mycelium_client.errors import (
    ConfigurationError,
    Conflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    MyceliumError,
    NotAuthorized,
    NotFound,
    QueryTimeout,
    RateLimited,
    ServiceUnavailable,
)
from mycelium_client.marketplace import (
    AsyncMarketplace,
    Capacity,
    Marketplace,
    ProductChanges,
    ProductRef,
    SearchFilters,
)
from mycelium_client.models import (
    AppliedMigration,
    AuditFinding,
    AuthUser,
    Balance,
    BalanceChange,
    BalanceSource,
    CategorySpending,
    CreditConfig,
    CreditPackage,
    CreditSummary,
    DailyEarnings,
    DailyStats,
    DatabaseConnections,
    DisplayCurrency,
    ExpiryResult,
    HoldRelease,
    MarketplaceConfig,
    MonthlyEarnings,
    Movement,
    MovementKind,
    Order,
    OrderItem,
    OrderStatus,
    OrderStatusCount,
    Product,
    ProductCategory,
    ProductEarnings,
    ProductHit,
    ProductPrices,
    ProductSort,
    ProductUnit,
    Profile,
    RoleChange,
    RoleName,
    Session,
    SignUpResult,
    TopUser,
    Transaction,
    TransactionKind,
    UpkeepBacklog,
)
from mycelium_client.orders import AsyncOrders, Basket, OrderRef, Orders
from mycelium_client.watch import AsyncBalanceWatch, BalanceWatch

__version__ = "0.1.0"

__all__ = [
    "Admin",
    "AmountLike",
    "AppliedMigration",
    "AsyncAdmin",
    "AsyncAuth",
    "AsyncBalanceWatch",
    "AsyncCredits",
    "AsyncMarketplace",
    "AsyncMyceliumClient",
    "AsyncOrders",
    "AuditFinding",
    "Auth",
    "AuthUser",
    "Balance",
    "BalanceChange",
    "BalanceSource",
    "BalanceWatch",
    "Basket",
    "Capacity",
    "CategorySpending",
    "ConfigurationError",
    "Conflict",
    "CreditConfig",
    "CreditPackage",
    "CreditSummary",
    "Credits",
    "DailyEarnings",
    "DailyStats",
    "DatabaseConnections",
    "DisplayCurrency",
    "ExpiryResult",
    "HoldRelease",
    "InsufficientCredits",
    "InvalidAmount",
    "InvalidArgument",
    "Marketplace",
    "MarketplaceConfig",
    "MonthlyEarnings",
    "Movement",
    "MovementKind",
    "MyceliumClient",
    "MyceliumError",
    "NotAuthorized",
    "NotFound",
    "Order",
    "OrderItem",
    "OrderRef",
    "OrderStatus",
    "OrderStatusCount",
    "Orders",
    "Product",
    "ProductCategory",
    "ProductChanges",
    "ProductEarnings",
    "ProductHit",
    "ProductPrices",
    "ProductRef",
    "ProductSort",
    "ProductUnit",
    "Profile",
    "QueryTimeout",
    "RateLimited",
    "RetryPolicy",
    "RoleChange",
    "RoleName",
    "SearchFilters",
    "ServiceUnavailable",
    "Session",
    "SignUpResult",
    "TopUser",
    "Transaction",
    "TransactionKind",
    "UpkeepBacklog",
    "WatchSettings",
]
